"""The typed configuration tree: one keyword-only dataclass per section.

Every field carries a docstring (rendered into docs/configuration.md by
``python -m megatron_scir.config.docs``). Checks that involve a single section live in
``__post_init__``; checks across sections live in :func:`megatron_scir.config.load.validate`.
Parallelism and model knobs are spelled as in Megatron-Core's ``TransformerConfig``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum

from megatron_scir.config.choices import (
    Backend,
    ConsistencyGrad,
    Divergence,
    Dtype,
    Engine,
    Fp8Format,
    Fp8Recipe,
    ImplicitReference,
    JudgeKind,
    LongPrompts,
    LossMode,
    LrDecayStyle,
    OnBadRecord,
    PairSelection,
    PositionDebias,
    PrefLoss,
    PrefNormalization,
    PromptSlices,
    RecomputeGranularity,
    RecomputeMethod,
    TokenizerType,
    TooFewPairs,
    TransformerImpl,
    TruncatedResponses,
    choices,
)
from megatron_scir.config.errors import ConfigError
from megatron_scir.config.judge_templates import PAIRWISE_TEMPLATE, POINTWISE_TEMPLATE


def _choice(section: str, key: str, value, enum: type[StrEnum], *, optional: bool = False) -> None:
    if optional and value is None:
        return
    if value not in choices(enum):
        allowed = ", ".join(map(repr, ((None,) if optional else ()) + choices(enum)))
        raise ConfigError(f"config key {section}.{key}: {value!r} is not one of {allowed}")


def _positive(section: str, key: str, value, *, allow_zero: bool = False) -> None:
    if value is None:
        return
    if value < 0 or (value == 0 and not allow_zero):
        bound = ">= 0" if allow_zero else "> 0"
        raise ConfigError(f"config key {section}.{key}: {value!r} must be {bound}")


@dataclass(kw_only=True)
class ModelConfig:
    """Llama/Mistral/Qwen2/Qwen3 decoder (RMSNorm, SwiGLU, GQA, RoPE; tied or untied embeddings)."""

    num_layers: int = 2
    """Number of transformer layers."""
    hidden_size: int = 64
    """Model width."""
    ffn_hidden_size: int = 172
    """SwiGLU inner width (per gate/up projection)."""
    num_attention_heads: int = 4
    """Query heads."""
    num_query_groups: int = 2
    """Key/value heads (GQA groups). Equal to num_attention_heads for plain MHA."""
    kv_channels: int | None = None
    """Head dimension; null means hidden_size // num_attention_heads."""
    add_qkv_bias: bool = False
    """Bias on the query/key/value projections (Megatron-Core's option; Qwen2/Qwen2.5, set from
    config.json on import). The fused linear_qkv bias is interleaved per query group like its
    weight rows; the output projection and the MLP stay without bias."""
    qk_layernorm: bool = False
    """RMSNorm over the head dimension of every query and key head, before RoPE (Megatron-Core's
    option; Qwen3's q_norm/k_norm, set from config.json on import). One [head_dim] weight each per
    layer, replicated over TP; Megatron all-reduces their gradients over the TP group."""
    vocab_size: int = 256
    """Tokenizer vocabulary size (before padding for tensor parallelism)."""
    make_vocab_size_divisible_by: int = 128
    """Megatron pads the vocabulary to a multiple of this times the TP size."""
    max_position_embeddings: int = 4096
    """Longest sequence the RoPE tables are built for."""
    share_embeddings_and_output_weights: bool = False
    """Tie the output layer to the input embeddings (Megatron-Core's option; HF's
    tie_word_embeddings, set from config.json on import: SmolLM2, Llama-3.2-1B/3B). With PP > 1
    the last stage holds a copy, kept equal by Megatron's all-reduce of the two gradients."""
    rotary_base: float = 10000.0
    """RoPE base (theta): 1e6 for Mistral-7B-v0.3, 5e5 for Llama-3.x."""
    rope_scaling: bool = False
    """Apply Llama-3.1 ("llama3") RoPE frequency scaling."""
    rope_scaling_factor: float = 8.0
    """Llama-3.1 RoPE scaling factor."""
    rope_low_freq_factor: float = 1.0
    """Llama-3.1 RoPE scaling low-frequency factor."""
    rope_high_freq_factor: float = 4.0
    """Llama-3.1 RoPE scaling high-frequency factor."""
    rope_original_max_position_embeddings: int = 8192
    """Context length the RoPE scaling was derived from."""
    layernorm_epsilon: float = 1e-5
    """RMSNorm epsilon."""
    init_method_std: float = 0.02
    """Std of the normal initialisation of weights (random init only)."""
    params_dtype: str = "float32"
    """Parameter/compute dtype: float32, bfloat16 or float16."""
    transformer_impl: str = "local"
    """Layer spec: local (Megatron-Core modules), sdpa (local + torch SDPA attention),
    te (Transformer Engine; required for FP8)."""
    fp8: str | None = None
    """FP8 format: null (off), hybrid (e4m3 fwd, e5m2 bwd) or e4m3. Needs transformer_impl=te."""
    fp8_recipe: str = "tensorwise"
    """FP8 scaling recipe: delayed, tensorwise (current scaling), blockwise or mxfp8 (Blackwell)."""
    fp8_param: bool = False
    """Keep parameters in FP8 (saves memory; needs fp8)."""
    first_last_layers_bf16: bool = False
    """With fp8: keep the first and last transformer layers in bf16 (Megatron-Core's option; not
    with the delayed recipe; no effect without fp8). The layers nearest the embedding and the
    output head are the most sensitive to FP8 rounding."""
    num_layers_at_start_in_bf16: int = 1
    """Layers at the start kept in bf16 with first_last_layers_bf16 (at most a pipeline stage's)."""
    num_layers_at_end_in_bf16: int = 1
    """Layers at the end kept in bf16 with first_last_layers_bf16 (at most a pipeline stage's)."""
    recompute_granularity: str | None = None
    """Activation recomputation: null, selective or full."""
    recompute_method: str | None = None
    """For full recompute: uniform or block."""
    recompute_num_layers: int | None = None
    """For full recompute: layers per recompute chunk (uniform) or recomputed layers (block)."""

    def __post_init__(self) -> None:
        s = "model"
        for key in (
            "num_layers",
            "hidden_size",
            "ffn_hidden_size",
            "num_attention_heads",
            "num_query_groups",
            "vocab_size",
            "make_vocab_size_divisible_by",
            "max_position_embeddings",
            "kv_channels",
        ):
            _positive(s, key, getattr(self, key))
        _choice(s, "params_dtype", self.params_dtype, Dtype)
        _choice(s, "transformer_impl", self.transformer_impl, TransformerImpl)
        _choice(s, "fp8", self.fp8, Fp8Format, optional=True)
        _choice(s, "fp8_recipe", self.fp8_recipe, Fp8Recipe)
        _choice(
            s,
            "recompute_granularity",
            self.recompute_granularity,
            RecomputeGranularity,
            optional=True,
        )
        _choice(s, "recompute_method", self.recompute_method, RecomputeMethod, optional=True)
        if self.num_attention_heads % self.num_query_groups:
            raise ConfigError(
                f"config key model.num_query_groups: {self.num_query_groups} must divide "
                f"model.num_attention_heads ({self.num_attention_heads})"
            )
        if self.kv_channels is None and self.hidden_size % self.num_attention_heads:
            raise ConfigError(
                f"model.hidden_size ({self.hidden_size}) is not divisible by "
                f"model.num_attention_heads ({self.num_attention_heads}); set model.kv_channels"
            )
        if self.fp8 is not None and self.transformer_impl != "te":
            raise ConfigError(
                f"model.fp8={self.fp8} needs the Transformer Engine spec: set "
                f"model.transformer_impl=te (it is {self.transformer_impl!r}), or model.fp8=null"
            )
        if self.fp8_param and self.fp8 is None:
            raise ConfigError("model.fp8_param=true needs model.fp8 (hybrid or e4m3)")
        if self.first_last_layers_bf16 and self.fp8 is not None:  # without fp8 all is bf16
            if self.fp8_recipe == "delayed":
                raise ConfigError(
                    "model.first_last_layers_bf16=true does not work with model.fp8_recipe=delayed "
                    "(Megatron-Core refuses it): use tensorwise or blockwise"
                )
            for key in ("num_layers_at_start_in_bf16", "num_layers_at_end_in_bf16"):
                if getattr(self, key) < 0:
                    raise ConfigError(f"config key model.{key} must be >= 0")
        if self.recompute_granularity == "full" and self.recompute_method is None:
            raise ConfigError(
                "model.recompute_granularity=full needs model.recompute_method (uniform or block)"
            )

    @property
    def head_dim(self) -> int:
        return self.kv_channels or self.hidden_size // self.num_attention_heads


@dataclass(kw_only=True)
class ParallelConfig:
    """Megatron-Core parallel layout. Data parallelism is whatever the world size leaves."""

    tensor_model_parallel_size: int = 1
    """TP degree: attention heads, query groups, FFN and vocabulary are split this many ways."""
    pipeline_model_parallel_size: int = 1
    """PP degree: layers are split into this many stages."""
    virtual_pipeline_model_parallel_size: int | None = None
    """Model chunks per pipeline rank for the interleaved 1F1B schedule (null = plain 1F1B)."""
    sequence_parallel: bool = False
    """Shard LayerNorm/dropout activations over the sequence within the TP group (needs TP > 1)."""
    use_distributed_optimizer: bool = False
    """Shard optimizer state over data-parallel ranks (ZeRO-1)."""
    overlap_grad_reduce: bool = False
    """Overlap the data-parallel gradient reduce with the backward pass."""
    overlap_param_gather: bool = False
    """Overlap the distributed optimizer's parameter all-gather with the forward pass."""
    grad_reduce_in_fp32: bool = True
    """Accumulate and reduce gradients in fp32 ``main_grad`` buffers (4 bytes/param). false keeps
    them in the parameter dtype (2 bytes/param in bf16): less memory, bf16 rounding in the
    accumulation over micro-batches and in the data-parallel reduction."""
    distributed_backend: str = "auto"
    """Process-group backend: auto (nccl with CUDA, gloo without), nccl or gloo."""

    def __post_init__(self) -> None:
        s = "parallel"
        _positive(s, "tensor_model_parallel_size", self.tensor_model_parallel_size)
        _positive(s, "pipeline_model_parallel_size", self.pipeline_model_parallel_size)
        _positive(
            s, "virtual_pipeline_model_parallel_size", self.virtual_pipeline_model_parallel_size
        )
        _choice(s, "distributed_backend", self.distributed_backend, Backend)
        if self.sequence_parallel and self.tensor_model_parallel_size == 1:
            raise ConfigError(
                "parallel.sequence_parallel=true needs parallel.tensor_model_parallel_size > 1"
            )
        vpp = self.virtual_pipeline_model_parallel_size
        if vpp is not None and vpp > 1 and self.pipeline_model_parallel_size == 1:
            raise ConfigError(
                "parallel.virtual_pipeline_model_parallel_size needs "
                "parallel.pipeline_model_parallel_size > 1"
            )
        if self.overlap_param_gather and not self.use_distributed_optimizer:
            raise ConfigError(
                "parallel.overlap_param_gather=true needs parallel.use_distributed_optimizer=true"
            )


@dataclass(kw_only=True)
class ScirConfig:
    """The SCIR objective (SCIR_SPEC §1–§6). Defaults are the spec's."""

    mode: str = "scir"
    """Training objective: scir (SCIR_SPEC §3–§5), srlm (labels fixed from the M_t judge) or
    dpo (labels from the data)."""
    beta: float = 0.1
    """DPO temperature β of the implicit reward r(y) = β·(log πθ − log πref)."""
    length_normalize: bool = False
    """Divide the implicit reward's log-ratio by the response length (SCIR_SPEC §1)."""
    consistency_weight: float = 1.0
    """λ_cons, weight of the consistency (divergence) penalty. With an unsure judge (P_G near ½,
    low verdict mass) 0 did better on SmolLM2 over 3 seeds × 3 iterations (docs/results.md)."""
    confidence_weight: float = 0.1
    """λ_conf, weight of the entropy (confidence) penalty."""
    divergence: str = "sym_kl"
    """D(P_G, P_I): sym_kl, js or mse (SCIR_SPEC §3)."""
    consistency_grad: str = "both"
    """Which side L_cons trains: both, confident_teacher, judge_teacher or implicit_teacher."""
    margin: float = 0.0
    """m: a pair is consistent only if both |P − ½| exceed max(m, tie_eps)."""
    tie_eps: float = 1e-4
    """Predictions within tie_eps of ½ carry no label."""
    pref_loss: str = "dpo"
    """Preference loss on consistent pairs: dpo (−log σ) or ipo."""
    pref_normalization: str = "pairs"
    """Divide L_pref by all pairs (pairs; split-invariant) or by the consistent pairs (selected)."""
    sft_weight: float = 0.0
    """Weight of an SFT term on the agreed chosen response (0 = off)."""
    srlm_drop_margin: float = 0.0
    """srlm mode: drop pairs with |P_G − ½| ≤ this when labels are fixed."""
    implicit_reference: str = "current"
    """The implicit reward's reference (SCIR_SPEC §1): current (M_t, the DPO reference) or
    previous (M_{t−1}; M_0 at iteration 1); the DPO term keeps πref = M_t."""
    previous_model: str | None = None
    """implicit_reference=previous: the checkpoint of M_0 for iteration 1 when the run starts from
    a seed model it did not train itself (iteration.seed_sft=false); with seed SFT in the run,
    M_0 is the model seed SFT started from."""
    selection: str = "consistent"
    """Pairs the DPO term trains on: consistent (SCIR_SPEC §4) or all (every pair the judge
    labels, with its label: selection off, an ablation)."""

    def __post_init__(self) -> None:
        s = "scir"
        _choice(s, "mode", self.mode, LossMode)
        _choice(s, "divergence", self.divergence, Divergence)
        _choice(s, "consistency_grad", self.consistency_grad, ConsistencyGrad)
        _choice(s, "pref_loss", self.pref_loss, PrefLoss)
        _choice(s, "pref_normalization", self.pref_normalization, PrefNormalization)
        _choice(s, "implicit_reference", self.implicit_reference, ImplicitReference)
        _choice(s, "selection", self.selection, PairSelection)
        _positive(s, "beta", self.beta)
        for key in (
            "consistency_weight",
            "confidence_weight",
            "margin",
            "sft_weight",
            "srlm_drop_margin",
        ):
            _positive(s, key, getattr(self, key), allow_zero=True)
        if not 0 < self.tie_eps < 0.5:
            raise ConfigError(f"config key scir.tie_eps: {self.tie_eps!r} must be in (0, 0.5)")


@dataclass(kw_only=True)
class JudgeConfig:
    """The generative judge read from logits at the verdict position (SCIR_SPEC §2)."""

    kind: str = "pairwise"
    """pairwise (A/B verdict, both orders) or pointwise (SRLM's additive 0–5 rubric)."""
    pairwise_template: str = PAIRWISE_TEMPLATE
    """Judge instruction with {prompt}, {response_a}, {response_b}; rendered as a user turn."""
    pointwise_template: str = POINTWISE_TEMPLATE
    """Judge instruction with {prompt}, {response}; rendered as a user turn."""
    verdict_prefix: str = ""
    """Text placed after the assistant header, right before the verdict token."""
    verdict_texts: list[str] = field(default_factory=lambda: ["A", "B"])
    """Pairwise verdict texts (first = the first-shown response wins); each must be one token."""
    score_texts: list[str] = field(default_factory=lambda: ["0", "1", "2", "3", "4", "5"])
    """Pointwise score texts for k = 0..K; each must be one token in context."""
    score_temperature: float = 1.0
    """τ in judge_logits = (s(y1) − s(y2)) / τ for pointwise judging."""
    position_debias: str = "mean_prob"
    """How the two pairwise judge orders combine: mean_prob, mean_logit, or none (one judge
    sequence per pair). Decides how many judge rows a pair has (SCIR_SPEC §2, §9)."""

    def __post_init__(self) -> None:
        _choice("judge", "kind", self.kind, JudgeKind)
        _choice("judge", "position_debias", self.position_debias, PositionDebias)
        _positive("judge", "score_temperature", self.score_temperature)
        if len(self.verdict_texts) != 2 or len(set(self.verdict_texts)) != 2:
            raise ConfigError(
                f"config key judge.verdict_texts: {self.verdict_texts!r} must be two distinct texts"
            )
        if len(self.score_texts) < 2 or len(set(self.score_texts)) != len(self.score_texts):
            raise ConfigError(
                f"config key judge.score_texts: {self.score_texts!r} must be >= 2 distinct texts"
            )
        for key, text, names in (
            (
                "pairwise_template",
                self.pairwise_template,
                ("{prompt}", "{response_a}", "{response_b}"),
            ),
            ("pointwise_template", self.pointwise_template, ("{prompt}", "{response}")),
        ):
            missing = [n for n in names if n not in text]
            if missing:
                raise ConfigError(f"config key judge.{key}: missing placeholder(s) {missing}")


@dataclass(kw_only=True)
class DataConfig:
    """Tokenizer, files and sequence budgets (SCIR_SPEC §7, §9)."""

    tokenizer_type: str = "sentencepiece"
    """sentencepiece (a .model file) or hf (a Hugging Face tokenizer directory)."""
    tokenizer_path: str | None = None
    """Path to the SentencePiece model file or the HF tokenizer directory."""
    chat_template: str = "plain"
    """plain (documented User:/Assistant: turns), tokenizer (the HF tokenizer's own template),
    or a format string with {prompt}."""
    prompts: str | None = None
    """The prompt pool: {"id", "prompt"} records, "messages" conversations or preference rows.
    Every data input is a .jsonl, .json or .parquet file, a datasets save_to_disk folder
    (DIR or DIR:SPLIT) or a Hub dataset hf:NAME[:CONFIG]:SPLIT (docs/data.md)."""
    seed_sft: str | None = None
    """Seed instruction data: {"prompt", "response"}, "messages" ending with the answer, or
    preference rows (prompt + chosen)."""
    seed_judge: str | None = None
    """Seed judge data: pairwise or pointwise records, or preference rows (pairwise verdicts)."""
    on_bad_record: str = "error"
    """error: stop at the first bad record (file:line or file:row N); skip: skip, count and
    summarise."""
    columns: list[str] = field(default_factory=list)
    """Renames of source columns, FIELD=COLUMN (e.g. [prompt=instruction,response=output]),
    applied to every data input before its shape is recognised."""
    max_prompt_length: int = 256
    """Token budget of chat(prompt): the one prompt budget of generation, pairs, the reference
    pass and training (left-truncated beyond it, the chat template kept whole)."""
    max_response_length: int = 256
    """Token budget of a response (right-truncated beyond it)."""
    judge_max_length: int = 1024
    """Token budget of a judge sequence (responses then prompt truncated; the tail never)."""
    max_truncated_fraction: float = 0.0
    """Share of a stage's items that may be cut to fit the budgets above: prompts (generation),
    pairs (training, reference pass, evaluation) or examples (seed SFT); an item counts once,
    whatever is cut (its prompt, a response's text, a judge row). Every item is measured before
    the first token is generated or trained on; a stage over this share is refused, naming the
    count, the longest item and the budget that would hold it. 0.0: no cut; 1.0: cut whatever
    does not fit (generation.long_prompts=skip skips long prompts instead)."""
    pairs_per_prompt: int = 2
    """Unlabeled pairs built per prompt from distinct responses (SCIR_SPEC §7)."""
    truncated_responses: str = "keep"
    """What pair building does with responses that hit max_new_tokens: keep, flag or drop."""
    shuffle: bool = True
    """Shuffle the epoch (seeded, per epoch) before sharding over data-parallel ranks."""
    group_by_length: bool = True
    """Within each global batch, put pairs of similar length in the same micro-batch (longest
    first): less padding, the same pairs per optimizer step; identical on every rank and exact
    on resume."""
    packed_sequences: bool | None = None
    """Pack a micro-batch's sequences into one row without padding (Megatron's THD format with
    per-sequence attention and positions). null: on with model.transformer_impl=sdpa, off with
    local (Megatron's attention has no packed path) and te (untested here); false: each row
    padded to the micro-batch's longest."""
    pad_to_multiple_of: int = 8
    """A micro-batch's rows (padded) or its packed row (packed) are padded up to a multiple of
    this, times the tensor-parallel size under sequence parallelism."""
    num_workers: int = 0
    """Worker processes for tokenisation (DataModule.setup) and the DataLoader (0 = in-process)."""

    def __post_init__(self) -> None:
        s = "data"
        _choice(s, "tokenizer_type", self.tokenizer_type, TokenizerType)
        _choice(s, "on_bad_record", self.on_bad_record, OnBadRecord)
        _choice(s, "truncated_responses", self.truncated_responses, TruncatedResponses)
        for key in (
            "max_prompt_length",
            "max_response_length",
            "judge_max_length",
            "pairs_per_prompt",
            "pad_to_multiple_of",
        ):
            _positive(s, key, getattr(self, key))
        _positive(s, "num_workers", self.num_workers, allow_zero=True)
        if not 0 <= self.max_truncated_fraction <= 1:
            raise ConfigError(
                f"config key data.max_truncated_fraction: {self.max_truncated_fraction!r} must be "
                "in [0, 1]"
            )


@dataclass(kw_only=True)
class GenerationConfig:
    """Sampling N responses per prompt with megatron.core.inference (SCIR_SPEC §7.1)."""

    num_responses: int = 4
    """Responses sampled per prompt."""
    temperature: float = 0.7
    """Sampling temperature (0 = greedy)."""
    top_p: float = 0.9
    """Nucleus sampling threshold (0 or 1 = off)."""
    top_k: int = 0
    """Top-k sampling (0 = off)."""
    max_new_tokens: int = 256
    """New tokens per response."""
    stop_strings: list[str] = field(default_factory=list)
    """Generation of a response stops at the first of these strings (besides EOS)."""
    max_batch_size: int = 32
    """Sequences decoded together."""
    long_prompts: str = "truncate"
    """Prompts longer than data.max_prompt_length (the one prompt budget of generation, the
    reference pass and training): truncate (cut the prompt text from the left, chat template
    kept whole, exactly as training truncates it) or skip; counted."""
    chunk_size: int = 64
    """Prompts per committed output chunk (the unit a restarted run resumes from)."""
    engine: str = "auto"
    """static (StaticInferenceEngine); auto (static, logging why not dynamic); dynamic is refused
    with its blockers until a dynamic-engine backend lands (it needs CUDA and flash-attn); vllm
    samples with vLLM from a Hugging Face folder of the policy (CUDA, ``pip install
    'megatron-scir[vllm]'``, no pipeline parallelism; docs/generation.md, GPU paths)."""
    cuda_graphs: bool = False
    """Replay decode steps as CUDA graphs: the static engine through Megatron-Core's flash decode
    (needs CUDA and flash-attn; refused otherwise), vllm through vLLM's own capture (false:
    vLLM runs eagerly)."""
    seed: int = 1234
    """Sampling seed; the same seed, model, prompts and layout give the same responses."""

    def __post_init__(self) -> None:
        s = "generation"
        _choice(s, "long_prompts", self.long_prompts, LongPrompts)
        _choice(s, "engine", self.engine, Engine)
        for key in (
            "num_responses",
            "max_new_tokens",
            "max_batch_size",
            "chunk_size",
        ):
            _positive(s, key, getattr(self, key))
        _positive(s, "temperature", self.temperature, allow_zero=True)
        _positive(s, "top_k", self.top_k, allow_zero=True)
        if not 0 <= self.top_p <= 1:
            raise ConfigError(f"config key generation.top_p: {self.top_p!r} must be in [0, 1]")


@dataclass(kw_only=True)
class TrainConfig:
    """Optimisation (Megatron-Core optimizer + DDP)."""

    micro_batch_size: int = 2
    """Pairs per micro-batch (all micro-batches have this size; SCIR_SPEC §4 normalisation)."""
    global_batch_size: int = 8
    """Pairs per optimizer step across data-parallel ranks and micro-batches."""
    train_iters: int | None = None
    """Optimizer steps per self-rewarding iteration (null = epochs decide)."""
    logprob_chunk_size: int = 1024
    """Policy response positions per output-layer chunk: the head's float32 logits are at most
    [logprob_chunk_size, V/tp], recomputed in backward (memory, not results)."""
    epochs: int = 1
    """Passes over the iteration's pairs when train_iters is null."""
    lr: float = 1e-6
    """Peak learning rate."""
    min_lr: float = 0.0
    """Final learning rate of the decay."""
    lr_warmup_iters: int = 0
    """Linear warm-up steps."""
    lr_decay_style: str = "cosine"
    """constant, linear or cosine."""
    weight_decay: float = 0.0
    """AdamW weight decay."""
    adam_beta1: float = 0.9
    """AdamW beta1."""
    adam_beta2: float = 0.95
    """AdamW beta2."""
    adam_eps: float = 1e-8
    """AdamW epsilon."""
    clip_grad: float = 1.0
    """Global gradient-norm clip (0 = off)."""
    seed: int = 1234
    """Seed for initialisation, shuffling and dropout."""
    sft_epochs: int = 1
    """Epochs of the seed SFT stage (instruction + judge data)."""
    sft_lr: float | None = None
    """Peak learning rate of the seed SFT stage (null = train.lr); SFT of a base model usually
    wants a larger one than preference training."""
    max_skipped_steps: int = 5
    """A step whose loss or gradient norm is NaN/inf is skipped (no update) and counted; this
    many consecutive skips stop the run with a message naming the step."""

    def __post_init__(self) -> None:
        s = "train"
        _choice(s, "lr_decay_style", self.lr_decay_style, LrDecayStyle)
        for key in (
            "micro_batch_size",
            "global_batch_size",
            "train_iters",
            "epochs",
            "max_skipped_steps",
            "logprob_chunk_size",
        ):
            _positive(s, key, getattr(self, key))
        if self.global_batch_size % self.micro_batch_size:
            raise ConfigError(
                f"train.global_batch_size ({self.global_batch_size}) must be a multiple of "
                f"train.micro_batch_size ({self.micro_batch_size})"
            )


@dataclass(kw_only=True)
class CheckpointConfig:
    """Megatron distributed checkpoints (torch_dist)."""

    load: str | None = None
    """Checkpoint to start from (a megatron-scir, Megatron-LM or NeMo 2 torch_dist directory)."""
    save: str | None = None
    """Directory the trainer writes checkpoints under (step_NNNNNNN subdirectories; --resume
    continues from the newest complete one)."""
    save_interval: int | None = None
    """Save every this many optimizer steps (null = only at the end of an iteration)."""
    keep_last: int | None = None
    """Keep only the newest this many checkpoints (null = keep all)."""
    export_hf: bool = False
    """Also export each iteration's model in Hugging Face format."""


@dataclass(kw_only=True)
class LoggingConfig:
    """Metrics (JSONL + TensorBoard) and progress."""

    log_dir: str | None = None
    """Where metrics.jsonl and TensorBoard events go (null = <run_dir>/logs)."""
    log_interval: int = 1
    """Log every this many steps."""
    tensorboard: bool = True
    """Write TensorBoard event files."""
    progress: bool = True
    """Show tqdm progress bars on rank 0."""
    wandb: bool = False
    """Also log to Weights & Biases (pip install -e .[wandb]; WANDB_MODE=offline needs no
    account). The run id is kept in <run dir>/trackers.json: a resumed run continues it."""
    wandb_project: str = "megatron-scir"
    """The W&B project."""
    wandb_entity: str | None = None
    """The W&B entity (team or user; null = the account's default)."""
    mlflow: bool = False
    """Also log to MLflow (pip install -e .[mlflow]); the run id is kept like W&B's."""
    mlflow_tracking_uri: str | None = None
    """The MLflow tracking URI (null = MLflow's default, MLFLOW_TRACKING_URI)."""
    mlflow_experiment: str = "megatron-scir"
    """The MLflow experiment (created when missing)."""
    run_name: str | None = None
    """The trackers' run name (null = the run directory's name)."""


@dataclass(kw_only=True)
class IterationConfig:
    """The self-rewarding loop (SCIR_SPEC §7)."""

    run_dir: str = "runs/scir"
    """Every stage of every iteration reads and writes files here."""
    num_iterations: int = 2
    """Self-rewarding iterations t = 1..T."""
    prompts_per_iteration: int | None = None
    """Prompts of the pool used per iteration (null = all)."""
    prompt_slices: str = "disjoint"
    """disjoint: iteration t answers prompts [(t−1)·n, t·n) of the pool (n =
    prompts_per_iteration; the pool must hold T·n prompts); all: every iteration answers the
    first n prompts."""
    seed_sft: bool = True
    """Run the seed SFT stage (instruction + judge data) before iteration 1."""
    too_few_pairs: str = "repeat"
    """An iteration whose n pairs do not fill one global batch (n < train.global_batch_size G),
    decided right after the pairs stage, before the reference pass: repeat: every pair once,
    then copies drawn without replacement (seeded by train.seed and t, a new draw per round)
    until there are G (Megatron's own answer to fewer samples than asked for: another epoch);
    skip: no reference pass or training, M_{t+1} = M_t; error: stop with the count. With no pair
    at all, repeat skips. The iteration's metrics say what was done (pairs_available,
    pairs_repeated, training_skipped, too_few_pairs)."""
    eval_pairs: str | None = None
    """Held-out labelled pairs JSONL: after every iteration, the accuracy of the implicit reward
    (against M_t), of the judge and their consistency rate (``scir evaluate --pairs``)."""
    eval_prompts: str | None = None
    """Held-out prompts JSONL: greedy answers after every iteration, graded by ``grader``."""
    grader: str | None = None
    """``module:function`` scoring (prompt, response) in [0, 1]: the oracle accuracy of the
    greedy answers on ``eval_prompts``, and the labels of ``scir.mode=dpo`` pairs (the response
    with the higher score is chosen; ties are dropped)."""
    lm_eval_tasks: list[str] = field(default_factory=list)
    """lm-eval-harness tasks run on each iteration's Hugging Face export after it (needs
    checkpoint.export_hf=true and pip install -e .[lm_eval]); their scores join the iteration
    metrics as lm_eval/<task>/<metric>."""
    lm_eval_include_path: str | None = None
    """A folder of extra lm-eval task YAMLs (local tasks over local data)."""
    lm_eval_limit: int | None = None
    """At most this many documents per lm-eval task (null = all)."""
    lm_eval_batch_size: int = 8
    """lm-eval's batch size."""

    def __post_init__(self) -> None:
        s = "iteration"
        _choice(s, "prompt_slices", self.prompt_slices, PromptSlices)
        _choice(s, "too_few_pairs", self.too_few_pairs, TooFewPairs)
        _positive(s, "num_iterations", self.num_iterations, allow_zero=True)
        _positive(s, "prompts_per_iteration", self.prompts_per_iteration)
        if self.grader is not None and ":" not in self.grader:
            raise ConfigError(
                f"iteration.grader={self.grader!r}: expected module:function, e.g. "
                "megatron_scir.tasks.arithmetic:grade"
            )


@dataclass(kw_only=True)
class Config:
    """The whole run: one section per package."""

    model: ModelConfig = field(default_factory=ModelConfig)
    parallel: ParallelConfig = field(default_factory=ParallelConfig)
    scir: ScirConfig = field(default_factory=ScirConfig)
    judge: JudgeConfig = field(default_factory=JudgeConfig)
    data: DataConfig = field(default_factory=DataConfig)
    generation: GenerationConfig = field(default_factory=GenerationConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)
    logging: LoggingConfig = field(default_factory=LoggingConfig)
    iteration: IterationConfig = field(default_factory=IterationConfig)
