"""Tied embeddings train under PP=2 as in one process, and the two stages' copies stay equal.

One 2-process gloo run. Every rank first takes one step of the TP=1/PP=1 tied model (as a DP
replica): Megatron DDP, the schedule, then an SGD step by Megatron's optimizer. The loss reads
the output layer both ways the SCIR heads do (``OutputHead.logits`` for every position,
``OutputHead.logits_at`` for a few picked positions), so the embedding's gradient is the lookup's
plus both output-layer terms. Then the same master weights go into PP=2: the first stage holds
the embedding, the last a copy as its output layer, and ``finalize_model_grads`` all-reduces the
two gradients over Megatron's embedding group; both must equal the single-process gradient, and
after the step the two copies must be bit-identical.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from megatron_scir.testing.distributed import run_distributed

pytestmark = pytest.mark.dist

SEQ, MBS, NUM_MICRO, LR = 16, 2, 2, 0.5
TIED = ["model.share_embeddings_and_output_weights=true", "model.vocab_size=200"]
EMBEDDING, OUTPUT = "embedding.word_embeddings.weight", "output_layer.weight"


def _batches(vocab: int) -> list[dict[str, torch.Tensor]]:
    g = torch.Generator().manual_seed(7)
    tokens = [torch.randint(0, vocab // 2, (MBS, SEQ + 1), generator=g) for _ in range(NUM_MICRO)]
    # tokens from the lower half only: the upper rows get the output layer's gradient alone
    return [{"tokens": t[:, :-1], "labels": t[:, 1:]} for t in tokens]


def _loss(head, labels: torch.Tensor) -> torch.Tensor:
    """Next-token NLL of every position plus that of three picked (row, position) pairs."""
    logits = head.logits(slice(None)).float()  # [b, s, V] (TP=1)
    nll = -logits.log_softmax(-1).gather(-1, labels.unsqueeze(-1)).mean()
    rows, positions = torch.tensor([1, 0, 1]), torch.tensor([3, 9, 15])
    picked = head.logits_at(rows, positions).float()  # [3, V]
    return nll + F.cross_entropy(picked, labels[rows, positions])


def _step(chunks, cfg, batches) -> tuple[float, dict, dict]:
    """One optimizer step over ``batches``: (mean loss, gradients, weights after), as master."""
    import torch.distributed as dist
    from megatron.core.optimizer import OptimizerConfig, get_megatron_optimizer
    from megatron.core.pipeline_parallel import get_forward_backward_func

    from megatron_scir.models import forward_last_stage
    from megatron_scir.parallel.ddp import wrap_with_ddp
    from megatron_scir.testing.weights import gather_master

    model = wrap_with_ddp(chunks, cfg)
    optimizer = get_megatron_optimizer(
        OptimizerConfig(optimizer="sgd", lr=LR, weight_decay=0.0, sgd_momentum=0.0, clip_grad=0.0),
        model,
    )

    def forward_step(data_iterator, module):
        batch = next(data_iterator)
        position_ids = torch.arange(SEQ).expand(MBS, SEQ)
        output = forward_last_stage(
            module, batch["tokens"], position_ids, lambda head: _loss(head, batch["labels"])
        )
        return output, lambda loss: (loss, {"loss": loss.detach()})

    optimizer.zero_grad()
    losses = get_forward_backward_func()(
        forward_step_func=forward_step,
        data_iterator=iter(batches),
        model=model,
        num_microbatches=len(batches),
        seq_length=SEQ,
        micro_batch_size=MBS,
        forward_only=False,
    )
    grads = gather_master(chunks, grads=True)
    optimizer.step()
    everyone = [None] * dist.get_world_size()
    dist.all_gather_object(everyone, [float(x["loss"]) for x in losses or []])
    values = [v for part in everyone for v in part]
    return sum(values) / len(values), grads, gather_master(chunks, grads=False)


def _tied_pp2_vs_one_process(rank, world_size):
    import dataclasses

    from megatron_scir.config import ParallelConfig, load_config
    from megatron_scir.models import build_gpt_model, build_model_chunks
    from megatron_scir.parallel.state import destroy_model_parallel, initialize_model_parallel
    from megatron_scir.testing.weights import gather_master, global_name

    cfg = load_config("tiny", [*TIED, "parallel.pipeline_model_parallel_size=2"])
    ref_cfg = dataclasses.replace(cfg, parallel=ParallelConfig())
    batches = _batches(cfg.model.vocab_size)

    initialize_model_parallel(ref_cfg.parallel)
    torch.manual_seed(3)
    ref = build_gpt_model(ref_cfg)
    master = {name: p.detach().clone() for name, p in ref.named_parameters()}
    ref_result = _step([ref], ref_cfg, batches)
    destroy_model_parallel()

    initialize_model_parallel(cfg.parallel)
    chunks = build_model_chunks(cfg)  # random init: Megatron copies the embedding to the last stage
    at_build = gather_master(chunks, grads=False)
    with torch.no_grad():
        for chunk in chunks:
            for name, param in chunk.named_parameters():
                key = EMBEDDING if name == OUTPUT else global_name(chunk, name)
                param.copy_(master[key])
    return {
        "master": master,
        "at_build": (at_build[EMBEDDING], at_build[OUTPUT]),
        "ref": ref_result,
        "pp2": _step(chunks, cfg, batches),
    }


@pytest.fixture(scope="module")
def tied_run():
    return run_distributed(_tied_pp2_vs_one_process, 2)[0]  # gathered: every rank has it all


def test_the_last_stage_starts_with_a_copy_of_the_first_stages_embeddings(tied_run):
    embedding, output = tied_run["at_build"]
    assert embedding.abs().max() > 0 and torch.equal(output, embedding)


def test_one_process_tied_model_has_one_weight_for_embeddings_and_output_layer(tied_run):
    _, grads, _ = tied_run["ref"]
    assert OUTPUT not in tied_run["master"] and OUTPUT not in grads
    # rows never used as input tokens learn through the output layer alone
    assert grads[EMBEDDING][100:200].abs().max() > 0


def test_tied_pp2_step_equals_the_one_process_step_and_keeps_the_copies_equal(tied_run):
    ref_loss, ref_grads, ref_after = tied_run["ref"]
    loss, grads, after = tied_run["pp2"]
    assert abs(loss - ref_loss) < 1e-5, (loss, ref_loss)
    # finalize_model_grads: both copies hold the lookup's plus the output layer's gradient
    for name in (EMBEDDING, OUTPUT):
        torch.testing.assert_close(grads[name], ref_grads[EMBEDDING], atol=1e-5, rtol=1e-4)
    assert torch.equal(after[OUTPUT], after[EMBEDDING])
    assert grads.keys() - {OUTPUT} == ref_grads.keys()
    for name, ref in ref_after.items():
        torch.testing.assert_close(after[name], ref, atol=1e-5, rtol=1e-4, msg=name)
        torch.testing.assert_close(grads[name], ref_grads[name], atol=1e-5, rtol=1e-4, msg=name)
    assert not torch.equal(ref_after[EMBEDDING], tied_run["master"][EMBEDDING])  # it did step
