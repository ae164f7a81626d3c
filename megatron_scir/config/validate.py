"""Checks that span sections. Each failure says which keys to change and how.

:func:`validate` always checks the model against the parallel layout (every command builds or
reads a model at some layout); the budget checks of a stage run only for the commands that run
that stage (``uses=``), so ``scir convert`` is never refused for a generation setting it does not
read. :func:`validate_world` is the one check of a launched world against the layout. Values
derived from the config (packing, data-parallel size, budgets) live in :mod:`.derived`.
"""

from __future__ import annotations

from collections.abc import Collection

from megatron_scir.config.choices import Engine, ImplicitReference, LossMode
from megatron_scir.config.derived import data_parallel_size, policy_seq_length
from megatron_scir.config.errors import ConfigError
from megatron_scir.config.schema import Config

GENERATION = "generation"
TRAINING = "training"
SELF_REWARDING = "self_rewarding"
"""The run trains on the responses it samples itself (``scir iterate``, ``scir demo``)."""
USES = (GENERATION, TRAINING, SELF_REWARDING)


def validate(cfg: Config, *, uses: Collection[str] = ()) -> None:
    """Cross-section checks: the layout always, and those of each stage named in ``uses``.

    Args:
        cfg: The resolved config.
        uses: Stages the caller runs: ``generation`` (prompt budget + new tokens fit the
            positions) and/or ``training`` (sequence budgets fit the positions and SP);
            ``self_rewarding`` (training on its own samples, with both): the responses it
            samples fit the response budget. ``scir evaluate`` generates and reads pairs but
            trains on nothing it sampled, so it does not name the last.
    """
    unknown = set(uses) - set(USES)
    if unknown:
        raise ValueError(f"validate(uses=...) takes {USES}, not {sorted(unknown)}")
    _check_layout(cfg)
    if GENERATION in uses:
        _check_generation(cfg)
    if TRAINING in uses:
        _check_training(cfg)
    if SELF_REWARDING in uses:
        _check_loop(cfg)


def _check_layout(cfg: Config) -> None:
    m, p = cfg.model, cfg.parallel
    tp, pp = p.tensor_model_parallel_size, p.pipeline_model_parallel_size
    for key, value in (
        ("num_attention_heads", m.num_attention_heads),
        ("num_query_groups", m.num_query_groups),
        ("ffn_hidden_size", m.ffn_hidden_size),
    ):
        if value % tp:
            raise ConfigError(
                f"model.{key} ({value}) must be divisible by "
                f"parallel.tensor_model_parallel_size ({tp}): choose a TP size that divides it"
            )
    chunks = pp * (p.virtual_pipeline_model_parallel_size or 1)
    if m.num_layers % chunks:
        what = "pipeline_model_parallel_size"
        if p.virtual_pipeline_model_parallel_size:
            what += " × parallel.virtual_pipeline_model_parallel_size"
        raise ConfigError(
            f"model.num_layers ({m.num_layers}) must be divisible by parallel.{what} ({chunks}): "
            "change the layer count or the pipeline layout"
        )
    if m.first_last_layers_bf16 and m.fp8 is not None:
        per_stage = m.num_layers // pp
        for key in ("num_layers_at_start_in_bf16", "num_layers_at_end_in_bf16"):
            if getattr(m, key) > per_stage:
                raise ConfigError(
                    f"model.{key} ({getattr(m, key)}) must be at most the layers of one pipeline "
                    f"stage ({per_stage} = model.num_layers / "
                    "parallel.pipeline_model_parallel_size)"
                )


def _check_generation(cfg: Config) -> None:
    pp = cfg.parallel.pipeline_model_parallel_size
    if cfg.generation.engine == Engine.VLLM and pp > 1:
        raise ConfigError(
            f"generation.engine=vllm with parallel.pipeline_model_parallel_size={pp}: "
            "megatron-scir runs vLLM with tensor parallelism only; set "
            "parallel.pipeline_model_parallel_size=1 or generation.engine=static"
        )
    prompt, new = cfg.data.max_prompt_length, cfg.generation.max_new_tokens
    if prompt + new > cfg.model.max_position_embeddings:
        raise ConfigError(
            f"data.max_prompt_length + generation.max_new_tokens ({prompt} + {new}) exceeds "
            f"model.max_position_embeddings ({cfg.model.max_position_embeddings})"
        )


def _check_training(cfg: Config) -> None:
    d, p = cfg.data, cfg.parallel
    if cfg.scir.implicit_reference == ImplicitReference.PREVIOUS and cfg.scir.mode != LossMode.SCIR:
        raise ConfigError(
            "scir.implicit_reference=previous sets the reference of SCIR's implicit reward model; "
            f"scir.mode={cfg.scir.mode} reads no implicit reward: remove it or use scir.mode=scir"
        )
    if d.packed_sequences and cfg.model.transformer_impl == "local":
        raise ConfigError(
            "data.packed_sequences=true needs an attention with a packed (THD) path: "
            "model.transformer_impl=sdpa (or te); Megatron's local attention has none. Set "
            "data.packed_sequences=null or false with model.transformer_impl=local"
        )
    tp = p.tensor_model_parallel_size
    policy_seq = policy_seq_length(d)
    seq = max(policy_seq, d.judge_max_length)
    if seq > cfg.model.max_position_embeddings:
        raise ConfigError(
            f"the training sequence length ({seq} = max(data.max_prompt_length + "
            "data.max_response_length, data.judge_max_length)) exceeds "
            f"model.max_position_embeddings ({cfg.model.max_position_embeddings})"
        )
    for length in (seq, policy_seq):  # judge-less batches (reference pass, dpo/srlm) use the latter
        if p.sequence_parallel and length % tp:
            raise ConfigError(
                f"parallel.sequence_parallel needs the sequence lengths ({seq} with judge rows, "
                f"{policy_seq} without) divisible by parallel.tensor_model_parallel_size ({tp}): "
                "adjust data.judge_max_length or data.max_prompt_length/data.max_response_length"
            )


def _check_loop(cfg: Config) -> None:
    """The loop trains on the responses it samples: refuse, before the first stage, a response
    budget that a response sampled to ``generation.max_new_tokens`` would be cut to, unless cuts
    are allowed (``data.max_truncated_fraction``; the DataModules count them exactly)."""
    if (
        cfg.scir.implicit_reference == ImplicitReference.PREVIOUS
        and not cfg.iteration.seed_sft
        and cfg.scir.previous_model is None
    ):
        raise ConfigError(
            "scir.implicit_reference=previous compares iteration 1's policy with M_0, the model "
            "before seed SFT, and this run does no seed SFT (iteration.seed_sft=false): set "
            "scir.previous_model=CKPT (the checkpoint the seed model was trained from)"
        )
    if cfg.iteration.lm_eval_tasks and not cfg.checkpoint.export_hf:
        raise ConfigError(
            "iteration.lm_eval_tasks runs lm-eval on each iteration's Hugging Face export: "
            "set checkpoint.export_hf=true"
        )
    new, budget = cfg.generation.max_new_tokens, cfg.data.max_response_length
    if new > budget and cfg.data.max_truncated_fraction == 0:
        raise ConfigError(
            f"generation.max_new_tokens ({new}) exceeds data.max_response_length ({budget}): "
            "training would cut the responses sampled to the end, and "
            "data.max_truncated_fraction=0.0 allows no cut. Raise data.max_response_length to "
            f"{new} (or lower generation.max_new_tokens), or allow a share of cut pairs with "
            "data.max_truncated_fraction"
        )


def validate_world(cfg: Config, world_size: int, *, training: bool = False) -> int:
    """Check the layout against the launched world size; returns the data-parallel size.

    Args:
        cfg: The resolved config.
        world_size: Processes launched.
        training: Also check that the global batch splits over the data-parallel ranks.
    """
    t = cfg.train
    dp = data_parallel_size(cfg.parallel, world_size)
    if training and t.global_batch_size % (t.micro_batch_size * dp):
        raise ConfigError(
            f"train.global_batch_size ({t.global_batch_size}) must be a multiple of "
            f"train.micro_batch_size × data-parallel size ({t.micro_batch_size} × {dp})"
        )
    return dp
