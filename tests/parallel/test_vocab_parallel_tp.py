"""At TP=2 the vocab-parallel log-probs equal a dense log_softmax over the unsplit vocabulary.

One 2-process gloo run: each rank holds one half of the vocabulary (``[.., V/2]``), computes
token and candidate log-probs and their gradients w.r.t. its shard; the parent compares with
float64 dense log_softmax values and the matching slice of the dense gradient.
"""

from __future__ import annotations

import pytest
import torch

from megatron_scir.testing.distributed import run_distributed

pytestmark = pytest.mark.dist

PARTITION = 8  # vocabulary columns per rank: ids 0..7 on rank 0, 8..15 on rank 1
# True vocabulary → candidate ids. 16: no padding; 11: rank 1 partly padding; 7: rank 0 holds a
# padded column and rank 1 padding only. Candidates lie on both shards where both hold tokens.
CANDIDATES = {16: [3, 15, 3, 8], 11: [10, 2, 8], 7: [6, 0]}
VOCAB_SIZES = tuple(CANDIDATES)


def _inputs(vocab: int) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(vocab)
    logits = 3 * torch.randn(2, 5, 2 * PARTITION, generator=g)
    logits[..., vocab:] = 40.0  # padding columns that would win an unmasked softmax
    return {
        "logits": logits,
        "ids": torch.randint(0, vocab, (2, 5), generator=g),
        "token_weights": torch.randn(2, 5, generator=g),
        "candidates": torch.tensor(CANDIDATES[vocab]),
        "candidate_weights": torch.randn(10, len(CANDIDATES[vocab]), generator=g),
    }


def _shard_results(rank: int, world_size: int) -> dict[int, dict[str, torch.Tensor]]:
    import torch.distributed as dist

    from megatron_scir.parallel.vocab_parallel import (
        vocab_parallel_candidate_log_probs,
        vocab_parallel_log_probs,
    )

    group = dist.new_group(list(range(world_size)))
    out = {}
    for vocab in VOCAB_SIZES:
        data = _inputs(vocab)
        shard = data["logits"][..., rank * PARTITION : (rank + 1) * PARTITION].clone()
        shard.requires_grad_(True)
        token = vocab_parallel_log_probs(shard, data["ids"], tp_group=group, vocab_size=vocab)
        (token_grad,) = torch.autograd.grad((token * data["token_weights"]).sum(), shard)
        candidate = vocab_parallel_candidate_log_probs(
            shard.reshape(-1, PARTITION), data["candidates"], tp_group=group, vocab_size=vocab
        )
        (candidate_grad,) = torch.autograd.grad(
            (candidate * data["candidate_weights"]).sum(), shard
        )
        out[vocab] = {
            "token": token.detach(),
            "token_grad": token_grad,
            "candidate": candidate.detach(),
            "candidate_grad": candidate_grad,
        }
    return out


@pytest.fixture(scope="module")
def tp2_results() -> list[dict[int, dict[str, torch.Tensor]]]:
    return run_distributed(_shard_results, world_size=2, timeout=120)


def _dense(vocab: int):
    data = _inputs(vocab)
    logits = data["logits"].double().requires_grad_(True)
    log_softmax = torch.log_softmax(logits[..., :vocab], dim=-1)
    token = log_softmax.gather(-1, data["ids"].unsqueeze(-1)).squeeze(-1)
    (token_grad,) = torch.autograd.grad(
        (token * data["token_weights"]).sum(), logits, retain_graph=True
    )
    candidate = log_softmax.reshape(-1, vocab)[:, data["candidates"]]
    (candidate_grad,) = torch.autograd.grad((candidate * data["candidate_weights"]).sum(), logits)
    return token.detach(), token_grad, candidate.detach(), candidate_grad


@pytest.mark.parametrize("vocab", VOCAB_SIZES)
def test_tp2_token_and_candidate_log_probs_equal_dense_values_and_gradients(tp2_results, vocab):
    token, token_grad, candidate, candidate_grad = _dense(vocab)
    for rank, results in enumerate(tp2_results):
        ours = results[vocab]
        columns = slice(rank * PARTITION, (rank + 1) * PARTITION)
        torch.testing.assert_close(ours["token"].double(), token, atol=1e-6, rtol=0)
        torch.testing.assert_close(ours["candidate"].double(), candidate, atol=1e-6, rtol=0)
        torch.testing.assert_close(
            ours["token_grad"].double(), token_grad[..., columns], atol=1e-6, rtol=0
        )
        torch.testing.assert_close(
            ours["candidate_grad"].double(), candidate_grad[..., columns], atol=1e-6, rtol=0
        )


def test_tp2_padding_columns_receive_no_gradient_on_either_rank(tp2_results):
    for rank, results in enumerate(tp2_results):
        for vocab in VOCAB_SIZES:
            first_pad = max(vocab - rank * PARTITION, 0)
            for key in ("token_grad", "candidate_grad"):
                assert torch.all(results[vocab][key][..., first_pad:] == 0), (rank, vocab, key)
