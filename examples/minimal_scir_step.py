"""One SCIR training step on Megatron-Core, written out linearly (SCIR_SPEC §1–§5, §9).

What it does, top to bottom:

1. initialise torch.distributed and Megatron's TP/PP/DP groups from the config;
2. build the tiny Llama-family GPTModel for this rank's pipeline stage and wrap it in Megatron
   DDP, plus Megatron's distributed-aware Adam;
3. make random micro-batches in the SCIR layout (k pairs → policy rows for y1 and y2, then the
   judge rows in both presentation orders), and a stand-in reference pass: the reference
   log-probs are the policy's own at the initial weights, shifted by random offsets (in a real
   iteration they come from M_t and are stored with the pairs);
4. run Megatron's pipeline schedule with the SCIR forward step: the last stage reads response
   log-probs (vocab-parallel), the judge's verdict log-probs at the verdict position only, and
   computes ``scir_loss``;
5. reduce the metrics over micro-batches and DP, take the optimizer step, print.

Simplifications: random token ids instead of rendered prompts/responses/judge templates (the data
package builds those), fixed verdict ids instead of ids derived from a tokenizer, one step.

Launch (CPU or GPU; any layout whose product divides the world size):

    python examples/minimal_scir_step.py
    torchrun --nproc-per-node 2 examples/minimal_scir_step.py \
        parallel.tensor_model_parallel_size=2 parallel.sequence_parallel=true
    torchrun --nproc-per-node 2 examples/minimal_scir_step.py \
        parallel.pipeline_model_parallel_size=2
"""

from __future__ import annotations

import contextlib
import sys

import torch
import torch.distributed as dist

from megatron_scir.config import load_config
from megatron_scir.parallel.runtime import parallel_world

SEQ_LENGTH = 64
NUM_MICROBATCHES = 2
VERDICT_IDS = [17, 200]  # token ids read as "first response wins" / "second response wins"


def log(message: str) -> None:
    if dist.get_rank() == 0:
        print(message, flush=True)


# 1. Distributed setup: gloo + the CPU compatibility layer without CUDA, NCCL with it.
# parallel_world sets up torch.distributed (torchrun's env, or a world of one) and Megatron's
# model-parallel state once; the ExitStack tears down exactly that at the end of the script.
cfg = load_config("tiny", sys.argv[1:])
world = contextlib.ExitStack()
runtime = world.enter_context(parallel_world(cfg.parallel, seed=cfg.train.seed))
log(
    f"world {runtime.world_size}: TP={runtime.tp_size} PP={runtime.pp_size} "
    f"DP={runtime.dp_size}, k={cfg.train.micro_batch_size} pairs per micro-batch"
)

# 2. Model (this rank's stage; several chunks with interleaved PP), DDP and optimizer.
from megatron.core.optimizer import OptimizerConfig, get_megatron_optimizer  # noqa: E402
from megatron.core.pipeline_parallel import get_forward_backward_func  # noqa: E402

from megatron_scir.models import build_model_chunks  # noqa: E402
from megatron_scir.parallel.ddp import wrap_with_ddp  # noqa: E402

torch.manual_seed(cfg.train.seed)
model = wrap_with_ddp(build_model_chunks(cfg), cfg)
optimizer = get_megatron_optimizer(
    OptimizerConfig(
        optimizer="adam",
        lr=cfg.train.lr,
        weight_decay=cfg.train.weight_decay,
        adam_beta1=cfg.train.adam_beta1,
        adam_beta2=cfg.train.adam_beta2,
        adam_eps=cfg.train.adam_eps,
        params_dtype=model[0].config.params_dtype,
        clip_grad=cfg.train.clip_grad,  # on CPU, parallel/cpu_compat.py makes clipping work
        use_distributed_optimizer=cfg.parallel.use_distributed_optimizer,
    ),
    model,
)

# 3. Micro-batches of this DP rank (every TP rank and PP stage of the replica sees the same).
from megatron_scir.data.layout import MicroBatchLayout  # noqa: E402
from megatron_scir.parallel.reductions import step_metrics  # noqa: E402
from megatron_scir.testing.scir_batches import random_scir_batch  # noqa: E402
from megatron_scir.training.forward_step import make_forward_step  # noqa: E402
from megatron_scir.training.logprob_heads import policy_sequence_logps  # noqa: E402

generator = torch.Generator().manual_seed(cfg.train.seed + runtime.dp_rank)
batches = [
    random_scir_batch(cfg, seq_length=SEQ_LENGTH, generator=generator)
    for _ in range(NUM_MICROBATCHES)
]
# Rows of a micro-batch (SCIR_SPEC §9), built once and handed to the step: random_scir_batch
# always adds the judge rows (a mode that reads no judge, scir.mode=dpo, leaves them unread).
layout = MicroBatchLayout.from_config(cfg, with_judge=True)
device = torch.device("cuda") if torch.cuda.is_available() else torch.device("cpu")
forward_backward = get_forward_backward_func()


def reference_forward_step(data_iterator, model_chunk):
    """Forward-only step whose last-stage output is the policy's response log-probs [2k]."""
    from megatron_scir.models import forward_last_stage

    batch = {key: value.to(device) for key, value in next(data_iterator).items()}

    def head_fn(head):
        policy = layout.policy_rows
        return policy_sequence_logps(
            head,
            policy,
            batch["labels"][policy],
            batch["loss_mask"][policy],
            tp_group=runtime.tp_group,
            vocab_size=cfg.model.vocab_size,
        )

    output = forward_last_stage(model_chunk, batch["tokens"], batch["position_ids"], head_fn)
    return output, lambda logps, non_loss_data=True: logps.detach()


# Stand-in reference pass: πref = πθ at these weights, shifted per response so that the implicit
# reward model has opinions at step 1 (with πref = πθ exactly every pair would be a tie).
with torch.no_grad():
    reference = forward_backward(
        forward_step_func=reference_forward_step,
        data_iterator=iter(batches) if len(model) == 1 else [iter(batches) for _ in model],
        model=model,
        num_microbatches=NUM_MICROBATCHES,
        seq_length=SEQ_LENGTH,
        micro_batch_size=batches[0]["tokens"].size(0),
        forward_only=True,
        collect_non_loss_data=True,
    )
for batch, policy_logps in zip(batches, reference, strict=False):  # empty off the last stage
    offsets = 20.0 * torch.rand(layout.num_policy_rows, generator=generator)
    batch["ref_logps"] = policy_logps.cpu() + offsets

# 4. The SCIR step through Megatron's schedule.
for chunk in model:
    chunk.zero_grad_buffer()
optimizer.zero_grad()
losses_reduced = forward_backward(
    forward_step_func=make_forward_step(cfg, layout, VERDICT_IDS, tp_group=runtime.tp_group),
    data_iterator=iter(batches) if len(model) == 1 else [iter(batches) for _ in model],
    model=model,
    num_microbatches=NUM_MICROBATCHES,
    seq_length=SEQ_LENGTH,
    micro_batch_size=batches[0]["tokens"].size(0),
    forward_only=False,
)

# 5. Global-batch metrics on every rank, then the optimizer step.
metrics = step_metrics(
    losses_reduced,
    dp_group=runtime.dp_group,
    pp_group=runtime.pp_group,
    is_last_stage=runtime.is_last_stage(),
)
updated, grad_norm, _ = optimizer.step()
log(f"optimizer step taken: {updated}, grad norm {grad_norm:.4f}")
for key in sorted(metrics):
    log(f"  {key:28s} {metrics[key]:.5f}")

world.close()
