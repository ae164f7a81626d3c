"""Vocab-parallel log-probs without tensor parallelism equal a dense float64 log_softmax."""

from __future__ import annotations

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten

from megatron_scir.parallel.vocab_parallel import (
    vocab_parallel_candidate_log_probs,
    vocab_parallel_log_probs,
)


def _dense_token_logps(logits: torch.Tensor, ids: torch.Tensor, vocab: int) -> torch.Tensor:
    log_softmax = torch.log_softmax(logits[..., :vocab].double(), dim=-1)
    return log_softmax.gather(-1, ids.unsqueeze(-1)).squeeze(-1)


def _grad(fn, logits: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    logits = logits.detach().clone().requires_grad_(True)
    (fn(logits).double() * weights).sum().backward()
    return logits.grad


def test_token_log_probs_equal_dense_log_softmax_in_values_and_gradients():
    g = torch.Generator().manual_seed(0)
    logits = 3 * torch.randn(2, 5, 32, generator=g)
    ids = torch.randint(0, 32, (2, 5), generator=g)
    weights = torch.randn(2, 5, generator=g, dtype=torch.float64)

    ours = vocab_parallel_log_probs(logits, ids, tp_group=None)
    assert ours.dtype == torch.float32 and ours.shape == (2, 5)
    torch.testing.assert_close(
        ours.double(), _dense_token_logps(logits, ids, 32), atol=1e-6, rtol=0
    )

    grad = _grad(lambda x: vocab_parallel_log_probs(x, ids, tp_group=None), logits, weights)
    dense = _grad(lambda x: _dense_token_logps(x, ids, 32), logits.double(), weights)
    torch.testing.assert_close(grad.double(), dense, atol=1e-6, rtol=0)


def test_padded_vocabulary_rows_get_no_probability_and_no_gradient():
    g = torch.Generator().manual_seed(1)
    logits = torch.randn(3, 4, 16, generator=g)
    logits[..., 11:] = 50.0  # padding rows that would dominate an unmasked softmax
    ids = torch.randint(0, 11, (3, 4), generator=g)
    weights = torch.randn(3, 4, generator=g, dtype=torch.float64)

    ours = vocab_parallel_log_probs(logits, ids, tp_group=None, vocab_size=11)
    torch.testing.assert_close(
        ours.double(), _dense_token_logps(logits, ids, 11), atol=1e-6, rtol=0
    )
    grad = _grad(
        lambda x: vocab_parallel_log_probs(x, ids, tp_group=None, vocab_size=11), logits, weights
    )
    assert torch.all(grad[..., 11:] == 0)
    dense = _grad(lambda x: _dense_token_logps(x, ids, 11), logits.double(), weights)
    torch.testing.assert_close(grad[..., :11].double(), dense[..., :11], atol=1e-6, rtol=0)


def test_ids_outside_the_true_vocabulary_have_log_prob_minus_inf_and_no_gradient():
    logits = torch.randn(1, 3, 8)
    ids = torch.tensor([[2, 6, -1]])
    ours = vocab_parallel_log_probs(logits, ids, tp_group=None, vocab_size=6)
    assert torch.isfinite(ours[0, 0]) and ours[0, 1] == -torch.inf and ours[0, 2] == -torch.inf
    grad = _grad(
        lambda x: vocab_parallel_log_probs(x, ids, tp_group=None, vocab_size=6)[:, :1],
        logits,
        torch.ones(1, 1),
    )
    assert torch.all(grad[..., 6:] == 0)


def test_bfloat16_logits_give_float32_log_probs_and_a_bfloat16_gradient():
    g = torch.Generator().manual_seed(2)
    logits = torch.randn(2, 3, 16, generator=g).bfloat16()
    ids = torch.randint(0, 16, (2, 3), generator=g)
    ours = vocab_parallel_log_probs(logits, ids, tp_group=None)
    assert ours.dtype == torch.float32
    torch.testing.assert_close(
        ours.double(), _dense_token_logps(logits, ids, 16), atol=1e-6, rtol=0
    )
    grad = _grad(
        lambda x: vocab_parallel_log_probs(x, ids, tp_group=None), logits, torch.ones(2, 3)
    )
    assert grad.dtype == torch.bfloat16


def test_the_callers_logits_are_never_written():
    logits = torch.randn(2, 3, 16)
    before = logits.clone()
    for vocab_size in (None, 12):
        out = vocab_parallel_log_probs(
            logits.requires_grad_(True),
            torch.zeros(2, 3).long(),
            tp_group=None,
            vocab_size=vocab_size,
        )
        out.sum().backward()
        assert torch.equal(logits.detach(), before)


def test_candidate_log_probs_equal_dense_for_repeated_and_padded_neighbour_ids():
    g = torch.Generator().manual_seed(3)
    logits = 2 * torch.randn(4, 24, generator=g)
    candidates = torch.tensor([5, 19, 5, 0])
    weights = torch.randn(4, 4, generator=g, dtype=torch.float64)

    def dense(x):
        return torch.log_softmax(x[:, :20].double(), dim=-1)[:, candidates]

    ours = vocab_parallel_candidate_log_probs(logits, candidates, tp_group=None, vocab_size=20)
    assert ours.shape == (4, 4) and ours.dtype == torch.float32
    torch.testing.assert_close(ours.double(), dense(logits), atol=1e-6, rtol=0)
    grad = _grad(
        lambda x: vocab_parallel_candidate_log_probs(x, candidates, tp_group=None, vocab_size=20),
        logits,
        weights,
    )
    torch.testing.assert_close(
        grad.double(), _grad(dense, logits.double(), weights), atol=1e-6, rtol=0
    )


def test_mismatched_shapes_are_refused_with_both_shapes_named():
    with pytest.raises(ValueError, match=r"\(2, 3, 8\).*\(2, 4\)"):
        vocab_parallel_log_probs(torch.zeros(2, 3, 8), torch.zeros(2, 4).long(), tp_group=None)
    with pytest.raises(ValueError, match="candidate_ids"):
        vocab_parallel_candidate_log_probs(
            torch.zeros(2, 8), torch.zeros(2, 1).long(), tp_group=None
        )


def test_the_tp_group_must_be_passed_even_without_tensor_parallelism():
    # A caller at TP=2 that forgot it would otherwise get plausible, wrong log-probs.
    with pytest.raises(TypeError, match="tp_group"):
        vocab_parallel_log_probs(torch.zeros(1, 2, 8), torch.zeros(1, 2).long())
    with pytest.raises(TypeError, match="tp_group"):
        vocab_parallel_candidate_log_probs(torch.zeros(2, 8), torch.tensor([1]))


def test_a_second_backward_through_the_same_graph_is_refused_not_silently_wrong():
    logits = torch.randn(2, 8, requires_grad=True)
    logps = vocab_parallel_candidate_log_probs(logits, torch.tensor([1, 2]), tp_group=None)
    logps.sum().backward(retain_graph=True)
    with pytest.raises(RuntimeError, match="runs once"):
        logps.sum().backward()


class _FullSizeAllocations(TorchDispatchMode):
    """Counts new tensors with at least ``size`` elements (views and in-place ops excluded)."""

    def __init__(self, size: int) -> None:
        super().__init__()
        self.size, self.count = size, 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        inputs = tree_flatten((args, kwargs))[0]
        storages = {t.untyped_storage().data_ptr() for t in inputs if isinstance(t, torch.Tensor)}
        for t in tree_flatten(out)[0]:
            if isinstance(t, torch.Tensor) and t.untyped_storage().data_ptr() not in storages:
                self.count += t.numel() >= self.size
        return out


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_logits_of_the_output_layer_cost_one_float32_buffer_forward_and_none_backward(dtype):
    # The output layer's logits arrive as a transposed view [s, b, V] → [b, s, V].
    logits = torch.randn(6, 2, 64, dtype=dtype).transpose(0, 1).requires_grad_(True)
    ids = torch.randint(0, 64, (2, 6))
    forward = _FullSizeAllocations(logits.numel())
    with forward:
        logps = vocab_parallel_log_probs(logits, ids, tp_group=None)
    backward = _FullSizeAllocations(logits.numel())
    with backward:
        torch.autograd.grad(logps.sum(), logits)
    assert forward.count == 1
    assert backward.count == (0 if dtype == torch.float32 else 1)  # the cast back to bf16
