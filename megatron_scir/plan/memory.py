"""Per-GPU memory of SCIR training and generation for a config and a cluster, without torch.

``scir plan`` answers "does this layout fit, and with what to spare?" before a job is queued.
Everything here reads the config tree and the shape table (:mod:`megatron_scir.models.shapes`);
nothing imports torch or Megatron (tested in a subprocess). Every figure is per GPU, in bytes
internally and in GiB (2**30 bytes) in reports; ``--gpu-memory-gb`` is read as GiB too (an
"80 GB" H100 reports 79.6 GiB: the default 10 % headroom covers the difference).

Symbols: L layers, h hidden, f FFN width, H query heads, G query groups (KV heads), d head dim,
V' the padded vocabulary (``padded_vocab_size``: V rounded up to ``divisible_by · t``), β bytes
of ``model.params_dtype`` (bf16/fp16 2, fp32 4), t TP, p PP, v VPP (1 without interleaving),
DP = world / (t · p), k pairs per micro-batch (``train.micro_batch_size``), r judge rows per
pair, b = k · (2 + r) rows per micro-batch, S the padded sequence length, m micro-batches per
step and DP rank = global_batch_size / (k · DP).

Rows (SCIR_SPEC §9): the training layout itself, :class:`megatron_scir.data.layout.MicroBatchLayout`
(torch-free), as the DataModule builds it: 2 policy rows per pair; r = 2 for a pairwise judge with
position debiasing (J(x,y1,y2), J(x,y2,y1)), 1 with ``judge.position_debias=none``, 2 for
pointwise (J(x,y1), J(x,y2)); r = 0 for the labelled modes ``dpo``/``srlm``, which read no judge.
S = prompt + response budget without judge rows, else max(that, ``data.judge_max_length``).

Training, per pipeline stage (the table shows the first and the last; the worst decides):

1. **Weights** = params on the rank × β. Params from ``mcore_tensor_shapes``: the linears
   (``linear_qkv`` [(H+2G)·d, h], ``linear_proj`` [h, H·d], ``linear_fc1`` [2f, h],
   ``linear_fc2`` [h, f]) and the vocab-parallel embedding and output layer [V', h] are split
   over t, as is Qwen2's ``linear_qkv`` bias [(H+2G)·d]; the RMSNorm weights [h] (and Qwen3's
   q/k norms [d]) are whole on every TP rank. A stage holds L/p layers (with
   interleaving too: v chunks of L/(p·v)); the embedding sits on the first stage, the output
   layer and final norm on the last (both on one stage when p = 1). Tied embeddings
   (``model.share_embeddings_and_output_weights``) have no output layer: counted once when
   p = 1; with p > 1 the last stage holds a copy of the embedding (with its own gradient and
   optimizer state), counted in that stage. With FP8 (Transformer Engine) Megatron keeps the
   weights in ``params_dtype``; ``model.fp8_param`` stores the linears as FP8 data plus its
   transpose (≈ 2 bytes), so β stands for it too.
2. **Gradients** = params × 4: Megatron DDP accumulates fp32 ``main_grad`` buffers
   (``parallel.grad_reduce_in_fp32=true``, the default), whatever the parameter dtype; with
   ``parallel.grad_reduce_in_fp32=false`` the buffers are in the parameter dtype (β bytes). The
   distributed optimizer reduce-scatters inside that buffer, so it is not sharded.
3. **Optimizer** (Adam) = params × 12 / DP' for bf16/fp16 parameters (fp32 master weight,
   ``exp_avg``, ``exp_avg_sq``), params × 8 / DP' for fp32 (the parameter is its own master);
   DP' = DP with ``parallel.use_distributed_optimizer`` (ZeRO-1 sharding over the data-parallel
   group), else 1. Together: the Megatron-LM bytes-per-parameter table (``docs/source/api-guide/
   dist_optimizer.md``; ``megatron/training/theoretical_memory_usage.py``
   ``num_bytes_per_parameter``): 18 = 2 + 4 + 12 without the distributed optimizer, 6 + 12/DP
   with it; fp32: 16, 8 + 8/DP.
4. **FP8 weight copies** = transformer-linear params × 2 with ``model.fp8`` and without
   ``fp8_param`` (less the layers ``model.first_last_layers_bf16`` keeps in bf16 on the first
   and last stage): Transformer Engine casts each linear weight to FP8 on a step's first
   micro-batch and caches it, row- and column-wise (the transpose for the backward GEMMs), for
   the step's other micro-batches (Megatron passes ``is_first_microbatch``).
5. **Activations** = in-flight micro-batches × the stage's layers × one layer's saved tensors.
   One layer keeps, per token (Korthikanti et al. 2022, "Reducing Activation Recomputation in
   Large Transformer Models", arXiv:2205.05198, §4.1 and Table 2, re-derived for this model,
   :func:`llama_layer_tensors`): the two norm inputs and the two column-parallel linears' inputs
   (h each, β bytes; replicated over TP, sequence-sharded under SP) and, split over t, Q (H·d),
   K and V (G·d each: GQA; H·d each with the ``local`` spec, which repeats them per head), the
   attention output = ``linear_proj`` input (H·d; ``sdpa`` keeps a second copy in the kernel's
   layout), the SwiGLU tensors ``linear_fc1`` output (2f), silu(gate) (f) and the
   ``linear_fc2`` input (f) — unfused, as ``bias_activation_fusion=False`` in
   ``models/gpt.py``. The paper's GPT layer (GeLU MLP of 4h, dropout, unfused 16-bit softmax;
   :func:`korthikanti_layer_tensors`) gives its s·b·h·(34 + 5·a·s/h) without TP,
   s·b·h·(10 + 24/t + 5·a·s/(h·t)) with TP, s·b·h·(34/t + 5·a·s/(h·t)) with TP + SP (tested).
   The attention-score term a·s per token: the ``local`` spec keeps the float32 softmax
   (``attention_softmax_in_fp32``) and its 16-bit copy (6 bytes per score; 4 in fp32);
   ``te`` and ``sdpa`` run fused (flash / memory-efficient) attention, which stores no
   [b, a, s, s] tensor, so the term is 0. Selective recompute (``core_attn``) removes the
   score term; full recompute keeps only each recomputed group's input (β·h per token, /t
   with SP: the paper's 2·s·b·h) — ``uniform``: one input per ``recompute_num_layers`` layers
   of a model chunk; ``block``: the first ``recompute_num_layers`` layers of each chunk keep
   their input, the rest everything — plus, once, the recomputed group's full activations
   during its backward. In-flight micro-batches on stage i (Narayanan et al. 2021, "Efficient
   Large-Scale Language Model Training on GPU Clusters Using Megatron-LM", arXiv:2104.04473,
   §2.2; Megatron-Core ``schedules.get_pp_rank_microbatches``): 1F1B warms up p − i − 1
   micro-batches, so min(p − i, m); interleaved: min(2·(p − i − 1) + (v − 1)·p + 1, m·v) chunk
   micro-batches of L/(p·v) layers, i.e. p·(1 + (p − 1)/(p·v)) stage micro-batches on stage 0
   (the ``interleaved_schedule_memory_penalty`` of ``theoretical_memory_usage.py``). Activations
   are counted in β bytes also under FP8 (TE's FP8 copies of linear inputs would be smaller:
   an upper bound).
6. **Logits** (last stage, one micro-batch in flight) = 2 × 4 × (c + k · r) × V'/t: the
   policy rows' output layer runs on their response positions only, c =
   min(``train.logprob_chunk_size``, 2k · response budget) at a time, recomputed in backward
   (``parallel/vocab_parallel.chunked_output_log_probs``): one chunk's float32 logits and a
   second buffer of that size (the shifted / exponentiated copy). The judge rows are read only at
   the verdict position ([k·r, V'/t], ``OutputHead.logits_at``). Without the chunking this was
   2k · S positions: the classic DPO out-of-memory term.
7. **Overhead** = a constant (default 3 GiB, ``--overhead-gb``): CUDA context, NCCL buffers of
   the TP/PP/DP groups, cuBLAS/TE workspaces, allocator fragmentation.

Generation (``generation_layout``: same t and p, SP off, no interleaving): weights as in 1; the
**KV cache** of Megatron's static engine = 2 (K, V) × L/p × G/t × d × (``data.max_prompt_length``
+ ``generation.max_new_tokens``) × ``generation.max_batch_size`` × β; **activations** = the
peak of one layer's no-grad forward over the prefill of ``max_batch_size`` prompts of the prompt
budget (:func:`prefill_bytes`; the static engine materialises the last token's logits only),
plus, on the last stage, those logits [max_batch_size, V'] gathered over TP, float32, twice; the
same overhead.

Not counted (inside the overhead or the headroom): CUDA graphs, TE/cuBLAS workspaces beyond
the constant, pipeline send/receive buffers, the embedding's input ids, the final norm's
tensors, transient gradient buffers of one layer in backward, NCCL buffers beyond the constant.
The reference pass (forward only, training layout) needs less than training.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

from megatron_scir.config import Config, ConfigError, ModelConfig, validate
from megatron_scir.config.choices import (
    Dtype,
    RecomputeGranularity,
    RecomputeMethod,
    TransformerImpl,
)
from megatron_scir.config.derived import micro_batches_per_step
from megatron_scir.config.validate import GENERATION, TRAINING, validate_world
from megatron_scir.data.layout import MicroBatchLayout
from megatron_scir.models.shapes import DTYPE_BYTES, dtype_name, mcore_tensor_shapes
from megatron_scir.models.shapes import padded_vocab_size as _padded_vocab_size

__all__ = [
    "COMPONENTS",
    "MemoryPlan",
    "SavedTensor",
    "StageMemory",
    "StageParams",
    "format_plan",
    "in_flight_micro_batches",
    "korthikanti_layer_tensors",
    "kv_cache_bytes",
    "layer_activation_bytes",
    "llama_layer_tensors",
    "logits_bytes",
    "plan_memory",
    "prefill_bytes",
    "stage_params",
    "total_params",
]

GIB = 2**30
DEFAULT_GPU_MEMORY_GB = 80.0
DEFAULT_HEADROOM = 0.1
DEFAULT_OVERHEAD_GB = 3.0
FP32_BYTES = 4
FP8_WEIGHT_COPY_BYTES = 2  # FP8 data + its transpose
LOGITS_BUFFERS = 2  # float32 logits + the (log-)softmax buffer of the same size


# --- parameters -------------------------------------------------------------------------------


@dataclass(frozen=True)
class StageParams:
    """Parameters one tensor-parallel rank of a pipeline stage holds.

    Attributes:
        sharded: This rank's slice of the TP-split tensors (linears, embedding, output layer).
        replicated: The norm weights, whole on every TP rank.
        linear: Of ``sharded``, the transformer linears (the GEMM weights FP8 casts).
    """

    sharded: int
    replicated: int
    linear: int

    @property
    def total(self) -> int:
        return self.sharded + self.replicated


def _is_norm(name: str) -> bool:
    # the input/pre-MLP norms (fused names), Qwen3's q/k norms and the final norm: whole per rank
    return name.endswith(("layer_norm_weight", "layernorm.weight"))


def total_params(m: ModelConfig, *, tp: int) -> int:
    """All parameters of the model, with the vocabulary padded for ``tp`` ranks (tied
    embeddings once, as ``num_parameters()`` of transformers counts them)."""
    vocab = _padded_vocab_size(m.vocab_size, m.make_vocab_size_divisible_by, tp)
    return sum(math.prod(shape) for shape in mcore_tensor_shapes(m, padded_vocab=vocab).values())


def stage_params(m: ModelConfig, *, tp: int, pp: int, stage: int) -> StageParams:
    """Parameters of one TP rank of pipeline stage ``stage`` (module docstring, item 1)."""
    shapes = mcore_tensor_shapes(
        m, padded_vocab=_padded_vocab_size(m.vocab_size, m.make_vocab_size_divisible_by, tp)
    )
    # tied under PP: the last stage's output layer is a copy of the embedding (Megatron's)
    tied_copy = m.share_embeddings_and_output_weights and stage == pp - 1
    sharded = replicated = linear = 0
    for name, shape in shapes.items():
        numel = math.prod(shape)
        if name.startswith("decoder.layers."):
            numel = numel // m.num_layers * (m.num_layers // pp)  # [L, ...] stacked per layer
        elif name.startswith("embedding.") and stage != 0 and not tied_copy:
            continue
        elif not name.startswith(("embedding.", "decoder.layers.")) and stage != pp - 1:
            continue  # output layer and final norm: last stage
        if _is_norm(name):
            replicated += numel
        else:
            sharded += numel // tp
            if name.startswith("decoder.layers.") and name.endswith(".weight"):
                linear += numel // tp  # GEMM weights (FP8 casts them), not the qkv bias
    return StageParams(sharded=sharded, replicated=replicated, linear=linear)


# --- activations --------------------------------------------------------------------------------


@dataclass(frozen=True)
class SavedTensor:
    """One tensor a transformer layer's forward keeps for its backward.

    Attributes:
        name: What it is.
        elements: Elements per token (per token and key position when ``scores``).
        bytes: Bytes per element.
        tp_sharded: Split over TP; otherwise whole on every TP rank, sequence-sharded under SP.
        scores: An [b, a, s, s] attention-score tensor (removed by selective recompute).
        layer_input: The layer's input (what full recompute keeps).
    """

    name: str
    elements: int
    bytes: float
    tp_sharded: bool
    scores: bool = False
    layer_input: bool = False


def llama_layer_tensors(m: ModelConfig) -> tuple[SavedTensor, ...]:
    """What one layer of this package's Llama/Mistral model saves (module docstring, item 5)."""
    beta = DTYPE_BYTES[dtype_name(m.params_dtype)]
    h, f, d = m.hidden_size, m.ffn_hidden_size, m.head_dim
    q, kv = m.num_attention_heads * d, m.num_query_groups * d
    impl = m.transformer_impl
    if impl == TransformerImpl.LOCAL:
        kv = q  # DotProductAttention repeats K and V per query head before its bmm
    tensors = [
        SavedTensor("input_layernorm input", h, beta, False, layer_input=True),
        SavedTensor("linear_qkv input", h, beta, False),
        SavedTensor("query (after RoPE)", q, beta, True),
        SavedTensor("key (after RoPE)", kv, beta, True),
        SavedTensor("value", kv, beta, True),
    ]
    if impl == TransformerImpl.LOCAL:
        heads = m.num_attention_heads
        tensors.append(SavedTensor("softmax output (float32)", heads, FP32_BYTES, True, True))
        if beta < FP32_BYTES:
            tensors.append(SavedTensor("attention probabilities", heads, beta, True, True))
    if impl == TransformerImpl.SDPA:
        tensors.append(SavedTensor("attention output (kernel layout)", q, beta, True))
    return (
        *tensors,
        SavedTensor("linear_proj input", q, beta, True),
        SavedTensor("pre_mlp_layernorm input", h, beta, False),
        SavedTensor("linear_fc1 input", h, beta, False),
        SavedTensor("linear_fc1 output (gate, up)", 2 * f, beta, True),
        SavedTensor("silu(gate)", f, beta, True),
        SavedTensor("linear_fc2 input", f, beta, True),
    )


def korthikanti_layer_tensors(m: ModelConfig) -> tuple[SavedTensor, ...]:
    """The paper's GPT layer (Korthikanti et al. 2022, §4.1): LayerNorm, GeLU MLP of width
    ``m.ffn_hidden_size``, dropout after attention, softmax and MLP, unfused 16-bit softmax.

    With ``ffn_hidden_size = 4h`` and ``num_query_groups = heads`` it sums to the paper's
    34·s·b·h + 5·a·s²·b bytes per layer; used to check :func:`layer_activation_bytes`.
    """
    h, f, d, a = m.hidden_size, m.ffn_hidden_size, m.head_dim, m.num_attention_heads
    q, kv = a * d, m.num_query_groups * d
    return (
        SavedTensor("layernorm 1 input", h, 2, False, layer_input=True),
        SavedTensor("qkv input", h, 2, False),
        SavedTensor("query", q, 2, True),
        SavedTensor("key", kv, 2, True),
        SavedTensor("softmax output", a, 2, True, scores=True),
        SavedTensor("softmax dropout mask", a, 1, True, scores=True),
        SavedTensor("softmax dropout output", a, 2, True, scores=True),
        SavedTensor("value", kv, 2, True),
        SavedTensor("projection input", q, 2, True),
        SavedTensor("attention dropout mask", h, 1, False),
        SavedTensor("layernorm 2 input", h, 2, False),
        SavedTensor("fc1 input", h, 2, False),
        SavedTensor("gelu input", f, 2, True),
        SavedTensor("fc2 input", f, 2, True),
        SavedTensor("mlp dropout mask", h, 1, False),
    )


def layer_activation_bytes(
    tensors: tuple[SavedTensor, ...],
    *,
    seq_length: int,
    rows: int,
    tp: int,
    sequence_parallel: bool,
    recompute: str | None,
) -> float:
    """Bytes one layer keeps on one TP rank for one micro-batch of ``rows`` × ``seq_length``.

    Args:
        tensors: The layer's saved tensors (:func:`llama_layer_tensors`).
        seq_length: s.
        rows: b.
        tp: t.
        sequence_parallel: Whether the replicated tensors are sequence-sharded over t.
        recompute: ``None``, ``"selective"`` (drops the score tensors) or ``"full"`` (keeps only
            the layer input).
    """
    tokens = seq_length * rows
    total = 0.0
    for tensor in tensors:
        if recompute == RecomputeGranularity.FULL and not tensor.layer_input:
            continue
        if recompute == RecomputeGranularity.SELECTIVE and tensor.scores:
            continue
        elements = tensor.elements * (seq_length if tensor.scores else 1)
        split = tp if tensor.tp_sharded or sequence_parallel else 1
        total += tokens * elements * tensor.bytes / split
    return total


def in_flight_micro_batches(*, pp: int, vpp: int, num_micro_batches: int, stage: int) -> float:
    """Micro-batches whose activations stage ``stage`` holds at its peak, in whole-stage units
    (module docstring, item 5; Megatron-Core ``get_pp_rank_microbatches``)."""
    if pp == 1:
        return 1.0
    if vpp == 1:
        return float(min(pp - stage, num_micro_batches))
    chunks = min((pp - stage - 1) * 2 + (vpp - 1) * pp + 1, num_micro_batches * vpp)
    return chunks / vpp


def _stage_activation_bytes(
    cfg: Config, layout: _Layout, *, rows: int, seq_length: int, in_flight: float
) -> float:
    m = cfg.model
    layer = dict(seq_length=seq_length, rows=rows, tp=layout.tp, sequence_parallel=layout.sp)
    tensors = llama_layer_tensors(m)
    granularity = m.recompute_granularity
    if granularity != RecomputeGranularity.FULL:
        per_layer = layer_activation_bytes(tensors, recompute=granularity, **layer)
        return in_flight * (m.num_layers // layout.pp) * per_layer
    full = layer_activation_bytes(tensors, recompute=None, **layer)
    kept_input = layer_activation_bytes(tensors, recompute=granularity, **layer)
    chunk_layers = m.num_layers // (layout.pp * layout.vpp)
    group = min(m.recompute_num_layers or 1, chunk_layers)
    if m.recompute_method == RecomputeMethod.BLOCK:
        per_chunk = group * kept_input + (chunk_layers - group) * full
        working_set = full if group else 0.0
    else:  # uniform: one kept input per group of `group` layers
        per_chunk = math.ceil(chunk_layers / group) * kept_input
        working_set = group * full
    return in_flight * layout.vpp * per_chunk + working_set


# --- the plan -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Layout:
    world: int
    tp: int
    pp: int
    vpp: int
    dp: int
    sp: bool


@dataclass(frozen=True)
class _Rows:
    """The training micro-batch (SCIR_SPEC §9): the DataModule's own layout, and how many."""

    batch: MicroBatchLayout
    num_micro_batches: int

    @property
    def packed_tokens(self) -> int | None:
        """Packed (THD): the worst pack, every sequence at its budget; None for padded rows."""
        return self.batch.max_packed_tokens if self.batch.packed else None


COMPONENTS = (
    "weights",
    "gradients",
    "optimizer",
    "fp8_weight_copies",
    "activations",
    "logits",
    "kv_cache",
    "overhead",
)
"""The per-GPU components, in report order (module docstring, items 1-7 and generation)."""


@dataclass(frozen=True)
class StageMemory:
    """Bytes one GPU of a pipeline stage needs, by component (module docstring).

    Attributes:
        stage: Pipeline stage (0-based).
        params: Parameters on the GPU.
        in_flight: Micro-batches whose activations the stage holds (training; 0 for generation).
        weights, gradients, optimizer, fp8_weight_copies, activations, logits, kv_cache,
        overhead: Bytes of each component (0 where it does not apply).
    """

    stage: int
    params: int
    in_flight: float
    weights: float
    gradients: float
    optimizer: float
    fp8_weight_copies: float
    activations: float
    logits: float
    kv_cache: float
    overhead: float

    @property
    def total(self) -> float:
        return sum(getattr(self, component) for component in COMPONENTS)


@dataclass(frozen=True)
class MemoryPlan:
    """Per-GPU memory of a config on a cluster: training (first and last pipeline stage) and
    generation (its worst stage), against the usable GPU memory.

    Attributes:
        nodes, gpus_per_node, world_size: The cluster.
        tensor_parallel, pipeline_parallel, virtual_pipeline, data_parallel: The layout.
        sequence_parallel, distributed_optimizer: As configured.
        total_params: The model's parameters (with the padded vocabulary).
        padded_vocab: V'.
        params_dtype: ``model.params_dtype`` (canonical name).
        grad_dtype: The ``main_grad`` buffers' dtype (``parallel.grad_reduce_in_fp32``).
        micro_batch_size: k, pairs per micro-batch.
        rows_per_micro_batch: b = k · (2 + r).
        judge_rows_per_pair: r.
        seq_length: S.
        num_micro_batches: Micro-batches per step and DP rank.
        packed_tokens: packed micro-batches (``data.packed_sequences``): the longest pack,
            every sequence at its budget; ``None``: rows padded (at most S each).
        training: The first and the last stage (one entry when PP = 1).
        generation: The generation layout's worst stage.
        gpu_memory_gb, headroom, usable_gb: GiB per GPU, the share kept free, what is left.
        max_micro_batch_size: The largest ``train.micro_batch_size`` that fits (0: not even 1).
        suggestions: Overrides that lower the peak, with the peak they give (when it misfits).
        verdict: The one-line answer.
    """

    nodes: int
    gpus_per_node: int
    world_size: int
    tensor_parallel: int
    pipeline_parallel: int
    virtual_pipeline: int
    data_parallel: int
    sequence_parallel: bool
    distributed_optimizer: bool
    total_params: int
    padded_vocab: int
    params_dtype: str
    grad_dtype: str
    micro_batch_size: int
    rows_per_micro_batch: int
    judge_rows_per_pair: int
    seq_length: int
    num_micro_batches: int
    training: tuple[StageMemory, ...]
    generation: StageMemory
    gpu_memory_gb: float
    headroom: float
    usable_gb: float
    max_micro_batch_size: int
    suggestions: tuple[str, ...]
    verdict: str
    packed_tokens: int | None = None

    @property
    def training_peak(self) -> StageMemory:
        return max(self.training, key=lambda s: s.total)

    @property
    def fits_training(self) -> bool:
        return self.training_peak.total <= self.usable_gb * GIB

    @property
    def fits_generation(self) -> bool:
        return self.generation.total <= self.usable_gb * GIB

    @property
    def fits(self) -> bool:
        return self.fits_training and self.fits_generation

    def to_dict(self) -> dict:
        """JSON-ready: components in GiB (``*_gib``), the verdict and the derived flags."""
        out = {
            k: v for k, v in dataclasses.asdict(self).items() if k not in ("training", "generation")
        }

        def stage(s: StageMemory) -> dict:
            gib = {f"{c}_gib": round(getattr(s, c) / GIB, 4) for c in COMPONENTS}
            return dict(
                stage=s.stage,
                params=s.params,
                in_flight=s.in_flight,
                **gib,
                total_gib=round(s.total / GIB, 4),
            )

        out["training"] = [stage(s) for s in self.training]
        out["generation"] = stage(self.generation)
        out.update(
            fits=self.fits, fits_training=self.fits_training, fits_generation=self.fits_generation
        )
        return out


def _rows(cfg: Config, layout: _Layout) -> _Rows:
    """The training micro-batch of ``scir.mode``, from the layout the DataModule builds."""
    return _Rows(
        MicroBatchLayout.for_training(cfg), micro_batches_per_step(cfg.train, layout.dp)
    )


def _layout(cfg: Config, nodes: int, gpus_per_node: int) -> _Layout:
    p = cfg.parallel
    tp, pp = p.tensor_model_parallel_size, p.pipeline_model_parallel_size
    world = nodes * gpus_per_node
    if world % (tp * pp):
        raise ConfigError(
            f"world size {world} (--nodes {nodes} × --gpus-per-node {gpus_per_node}) is not "
            f"divisible by parallel.tensor_model_parallel_size × "
            f"parallel.pipeline_model_parallel_size ({tp} × {pp} = {tp * pp}): plan a multiple "
            f"of {tp * pp} GPUs or change the layout"
        )
    return _Layout(
        world=world,
        tp=tp,
        pp=pp,
        vpp=p.virtual_pipeline_model_parallel_size or 1,
        dp=world // (tp * pp),
        sp=p.sequence_parallel,
    )


def _state_bytes(cfg: Config, layout: _Layout, params: StageParams, stage: int) -> dict[str, float]:
    """Weights, gradients, optimizer and FP8 copies of one stage (items 1-4)."""
    m = cfg.model
    dtype = dtype_name(m.params_dtype)
    beta = DTYPE_BYTES[dtype]
    adam = 8 if dtype == Dtype.FLOAT32 else 12  # fp32: the parameter is its own master copy
    shards = layout.dp if cfg.parallel.use_distributed_optimizer else 1
    fp8_linear = 0.0
    if m.fp8 is not None and not m.fp8_param:
        stage_layers = m.num_layers / layout.pp
        fp8_linear = params.linear * (1 - _bf16_layers(m, layout, stage) / stage_layers)
    return dict(
        weights=params.total * beta,
        gradients=params.total * DTYPE_BYTES[_grad_dtype(cfg)],
        optimizer=params.total * adam / shards,
        fp8_weight_copies=fp8_linear * FP8_WEIGHT_COPY_BYTES,
    )


def _grad_dtype(cfg: Config) -> Dtype:
    """The ``main_grad`` buffers' dtype: fp32 with ``parallel.grad_reduce_in_fp32``, else the
    parameters'."""
    return Dtype.FLOAT32 if cfg.parallel.grad_reduce_in_fp32 else dtype_name(cfg.model.params_dtype)


def _bf16_layers(m: ModelConfig, layout: _Layout, stage: int) -> int:
    """Layers of ``stage`` that ``model.first_last_layers_bf16`` keeps out of FP8: the first
    ones live on the first stage, the last ones on the last (interleaved or not)."""
    if not m.first_last_layers_bf16:
        return 0
    first = m.num_layers_at_start_in_bf16 if stage == 0 else 0
    return first + (m.num_layers_at_end_in_bf16 if stage == layout.pp - 1 else 0)


def logits_bytes(m: ModelConfig, *, policy_positions: int, judge_rows: int, tp: int) -> float:
    """Item 6: the float32 logits of one chunk of policy response positions and of the judge
    rows at their verdict position."""
    vocab_shard = _padded_vocab_size(m.vocab_size, m.make_vocab_size_divisible_by, tp) // tp
    return LOGITS_BUFFERS * FP32_BYTES * (policy_positions + judge_rows) * vocab_shard


def _training_stage(
    cfg: Config, layout: _Layout, rows: _Rows, stage: int, overhead: float
) -> StageMemory:
    params = stage_params(cfg.model, tp=layout.tp, pp=layout.pp, stage=stage)
    in_flight = in_flight_micro_batches(
        pp=layout.pp, vpp=layout.vpp, num_micro_batches=rows.num_micro_batches, stage=stage
    )
    activations = _stage_activation_bytes(
        cfg,
        layout,
        rows=1 if rows.packed_tokens else rows.batch.num_rows,
        seq_length=rows.packed_tokens or rows.batch.seq_length,
        in_flight=in_flight,
    )
    logits = 0.0
    if stage == layout.pp - 1:  # the output layer's stage; one micro-batch in flight there
        responses = rows.batch.num_policy_rows * cfg.data.max_response_length
        logits = logits_bytes(
            cfg.model,
            policy_positions=min(cfg.train.logprob_chunk_size, responses),
            judge_rows=rows.batch.num_judge_rows,
            tp=layout.tp,
        )
    return StageMemory(
        stage=stage,
        params=params.total,
        in_flight=in_flight,
        **_state_bytes(cfg, layout, params, stage),
        activations=activations,
        logits=logits,
        kv_cache=0.0,
        overhead=overhead,
    )


def kv_cache_bytes(cfg: Config, *, tp: int, pp: int) -> float:
    """Item 6 of generation: the static engine's K and V buffers of the stage's layers."""
    m, g = cfg.model, cfg.generation
    beta = DTYPE_BYTES[dtype_name(m.params_dtype)]
    tokens = cfg.data.max_prompt_length + g.max_new_tokens
    per_layer = 2 * (m.num_query_groups // tp) * m.head_dim * tokens * g.max_batch_size * beta
    return m.num_layers // pp * per_layer


def prefill_bytes(cfg: Config, *, tp: int) -> float:
    """Generation activations: one layer's no-grad forward over ``max_batch_size`` prompts of the
    prompt budget, at its peak — the layer input and norm output (h each) plus the larger of
    attention (QKV output, attention output; the ``local`` spec's float32 scores and their
    16-bit copy) and the SwiGLU MLP (fc1 output 2f, silu(gate) f, product f), split over t."""
    m, g = cfg.model, cfg.generation
    beta = DTYPE_BYTES[dtype_name(m.params_dtype)]
    prompt, h, f = cfg.data.max_prompt_length, m.hidden_size, m.ffn_hidden_size
    q, kv = m.num_attention_heads * m.head_dim, m.num_query_groups * m.head_dim
    attention = beta * (q + 2 * kv + q) / tp
    if m.transformer_impl == TransformerImpl.LOCAL:
        copy = beta if beta < FP32_BYTES else 0
        attention += m.num_attention_heads * prompt * (FP32_BYTES + copy) / tp
    mlp = beta * 4 * f / tp
    return g.max_batch_size * prompt * (2 * h * beta + max(attention, mlp))


def _generation_stage(cfg: Config, layout: _Layout, stage: int, overhead: float) -> StageMemory:
    m, g = cfg.model, cfg.generation
    params = stage_params(m, tp=layout.tp, pp=layout.pp, stage=stage)
    vocab = _padded_vocab_size(m.vocab_size, m.make_vocab_size_divisible_by, layout.tp)
    last_token_logits = LOGITS_BUFFERS * FP32_BYTES * g.max_batch_size * vocab
    return StageMemory(
        stage=stage,
        params=params.total,
        in_flight=0.0,
        weights=params.total * DTYPE_BYTES[dtype_name(m.params_dtype)],
        gradients=0.0,
        optimizer=0.0,
        fp8_weight_copies=0.0,
        activations=prefill_bytes(cfg, tp=layout.tp),
        logits=last_token_logits if stage == layout.pp - 1 else 0.0,
        kv_cache=kv_cache_bytes(cfg, tp=layout.tp, pp=layout.pp),
        overhead=overhead,
    )


def _stages(layout: _Layout) -> tuple[int, ...]:
    return (0,) if layout.pp == 1 else (0, layout.pp - 1)


def _training(cfg: Config, layout: _Layout, overhead: float) -> tuple[StageMemory, ...]:
    rows = _rows(cfg, layout)
    return tuple(_training_stage(cfg, layout, rows, s, overhead) for s in _stages(layout))


def _generation(cfg: Config, layout: _Layout, overhead: float) -> StageMemory:
    stages = (_generation_stage(cfg, layout, s, overhead) for s in _stages(layout))
    return max(stages, key=lambda s: s.total)


def _check(cfg: Config, layout: _Layout) -> None:
    validate(cfg, uses=(GENERATION, TRAINING))
    validate_world(cfg, layout.world, training=True)


def _max_micro_batch_size(cfg: Config, layout: _Layout, overhead: float, usable: float) -> int:
    """The largest k dividing global_batch_size / DP whose training peak fits (0: none)."""
    per_rank = cfg.train.global_batch_size // layout.dp
    best = 0
    for k in range(1, per_rank + 1):
        if per_rank % k:
            continue
        trial = _with(cfg, "train", micro_batch_size=k)
        if max(s.total for s in _training(trial, layout, overhead)) <= usable:
            best = k
    return best


def _with(cfg: Config, section: str, **changes) -> Config:
    return dataclasses.replace(
        cfg, **{section: dataclasses.replace(getattr(cfg, section), **changes)}
    )


def _candidates(cfg: Config, layout: _Layout, nodes: int, max_k: int):
    """(label, config, nodes) of the changes ``scir plan`` tries when training misfits."""
    p, m = cfg.parallel, cfg.model
    if 0 < max_k < cfg.train.micro_batch_size:
        yield f"train.micro_batch_size={max_k}", _with(cfg, "train", micro_batch_size=max_k), nodes
    if not p.use_distributed_optimizer and layout.dp > 1:
        yield (
            "parallel.use_distributed_optimizer=true",
            _with(cfg, "parallel", use_distributed_optimizer=True),
            nodes,
        )
    if p.grad_reduce_in_fp32 and m.params_dtype != Dtype.FLOAT32:
        yield (
            "parallel.grad_reduce_in_fp32=false",
            _with(cfg, "parallel", grad_reduce_in_fp32=False),
            nodes,
        )
    if m.recompute_granularity != RecomputeGranularity.FULL:
        yield (
            "model.recompute_granularity=full model.recompute_method=uniform "
            "model.recompute_num_layers=1",
            _with(
                cfg,
                "model",
                recompute_granularity="full",
                recompute_method="uniform",
                recompute_num_layers=1,
            ),
            nodes,
        )
    if layout.tp > 1 and not p.sequence_parallel:
        yield (
            "parallel.sequence_parallel=true",
            _with(cfg, "parallel", sequence_parallel=True),
            nodes,
        )
    yield (
        f"parallel.pipeline_model_parallel_size={2 * layout.pp}",
        _with(cfg, "parallel", pipeline_model_parallel_size=2 * layout.pp),
        nodes,
    )
    if p.use_distributed_optimizer:
        yield f"--nodes {2 * nodes}", cfg, 2 * nodes


def _suggestions(
    cfg: Config,
    layout: _Layout,
    *,
    nodes: int,
    gpus_per_node: int,
    max_k: int,
    overhead: float,
    usable: float,
    training: bool,
) -> tuple[str, ...]:
    """Changes that lower the misfitting peak, each with the peak it would give."""
    found = []
    if not training:  # generation misfits: fewer sequences decoded together
        for batch in range(cfg.generation.max_batch_size - 1, 0, -1):
            trial = _with(cfg, "generation", max_batch_size=batch)
            if _generation(trial, layout, overhead).total <= usable:
                found.append(f"generation.max_batch_size={batch}")
                break
        return tuple(found)
    current = max(s.total for s in _training(cfg, layout, overhead))
    for label, trial, trial_nodes in _candidates(cfg, layout, nodes, max_k):
        try:
            trial_layout = _layout(trial, trial_nodes, gpus_per_node)
            _check(trial, trial_layout)
        except ConfigError:
            continue
        peak = max(s.total for s in _training(trial, trial_layout, overhead))
        if peak < current:
            mark = ", fits" if peak <= usable else ""
            found.append(f"{label} (→ {peak / GIB:.1f} GiB{mark})")
    return tuple(found)


def _verdict(
    training: float,
    generation: float,
    usable_gb: float,
    gpu_gb: float,
    headroom: float,
    suggestions: tuple[str, ...],
) -> str:
    budget = f"{usable_gb:.1f} GiB usable ({gpu_gb:g} GiB − {headroom * 100:g} %)"
    peak, which = max((training, "training"), (generation, "generation"))
    if peak <= usable_gb * GIB:
        return f"fits: {peak / GIB:.1f} of {budget}"
    more = (peak - usable_gb * GIB) / GIB
    line = f"does not fit: {which} needs {peak / GIB:.1f} of {budget}, {more:.1f} GiB more"
    return line + ("; try: " + "; ".join(suggestions) if suggestions else "")


def plan_memory(
    cfg: Config,
    *,
    nodes: int,
    gpus_per_node: int,
    gpu_memory_gb: float = DEFAULT_GPU_MEMORY_GB,
    headroom: float = DEFAULT_HEADROOM,
    overhead_gb: float = DEFAULT_OVERHEAD_GB,
) -> MemoryPlan:
    """Plan the per-GPU memory of ``cfg`` on ``nodes`` × ``gpus_per_node`` GPUs.

    Args:
        cfg: The resolved config (model, layout, batch, budgets, judge, mode, generation).
        nodes: Nodes.
        gpus_per_node: GPUs per node.
        gpu_memory_gb: GiB per GPU.
        headroom: Share of the GPU kept free (0.1: plan against 90 %).
        overhead_gb: The fixed per-GPU overhead (CUDA context, NCCL, fragmentation).

    Raises:
        ConfigError: a world not divisible by TP × PP, a global batch that does not split over
            DP, any config check of training or generation, or a bad argument.
    """
    for flag, value in (("--nodes", nodes), ("--gpus-per-node", gpus_per_node)):
        if value < 1:
            raise ConfigError(f"{flag} must be >= 1 (got {value})")
    if gpu_memory_gb <= 0 or overhead_gb < 0 or not 0 <= headroom < 1:
        raise ConfigError(
            f"--gpu-memory-gb must be > 0 ({gpu_memory_gb}), --overhead-gb >= 0 ({overhead_gb}) "
            f"and --headroom in [0, 1) ({headroom})"
        )
    layout = _layout(cfg, nodes, gpus_per_node)
    _check(cfg, layout)
    overhead, usable_gb = overhead_gb * GIB, gpu_memory_gb * (1 - headroom)
    usable = usable_gb * GIB
    training = _training(cfg, layout, overhead)
    generation = _generation(cfg, layout, overhead)
    max_k = _max_micro_batch_size(cfg, layout, overhead, usable)
    train_peak = max(s.total for s in training)
    suggestions: tuple[str, ...] = ()
    if max(train_peak, generation.total) > usable:
        suggestions = _suggestions(
            cfg,
            layout,
            nodes=nodes,
            gpus_per_node=gpus_per_node,
            max_k=max_k,
            overhead=overhead,
            usable=usable,
            training=train_peak >= generation.total,
        )
    rows = _rows(cfg, layout)
    m = cfg.model
    return MemoryPlan(
        nodes=nodes,
        gpus_per_node=gpus_per_node,
        world_size=layout.world,
        tensor_parallel=layout.tp,
        pipeline_parallel=layout.pp,
        virtual_pipeline=layout.vpp,
        data_parallel=layout.dp,
        sequence_parallel=layout.sp,
        distributed_optimizer=cfg.parallel.use_distributed_optimizer,
        total_params=total_params(m, tp=layout.tp),
        padded_vocab=_padded_vocab_size(m.vocab_size, m.make_vocab_size_divisible_by, layout.tp),
        params_dtype=dtype_name(m.params_dtype).value,
        grad_dtype=_grad_dtype(cfg).value,
        micro_batch_size=rows.batch.num_pairs,
        rows_per_micro_batch=rows.batch.num_rows,
        judge_rows_per_pair=rows.batch.judge_rows_per_pair,
        seq_length=rows.batch.seq_length,
        num_micro_batches=rows.num_micro_batches,
        packed_tokens=rows.packed_tokens,
        training=training,
        generation=generation,
        gpu_memory_gb=gpu_memory_gb,
        headroom=headroom,
        usable_gb=usable_gb,
        max_micro_batch_size=max_k,
        suggestions=suggestions,
        verdict=_verdict(
            train_peak, generation.total, usable_gb, gpu_memory_gb, headroom, suggestions
        ),
    )


# --- the report ---------------------------------------------------------------------------------


def _labels(plan: MemoryPlan) -> dict[str, str]:
    opt_shards = f"/{plan.data_parallel} DP" if plan.distributed_optimizer else "not sharded"
    return {
        "weights": f"weights ({plan.params_dtype})",
        "gradients": f"gradients ({plan.grad_dtype} main_grad)",
        "optimizer": f"optimizer (Adam, {opt_shards})",
        "fp8_weight_copies": "FP8 weight copies",
        "activations": "activations",
        "logits": "logits (float32)",
        "kv_cache": "KV cache",
        "overhead": "overhead",
    }


def _count(n: int) -> str:
    return f"{n / 1e9:.3f}B" if n >= 1e9 else f"{n / 1e6:.3f}M"


def _table(header: list[str], rows: list[list[str]]) -> list[str]:
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]

    def line(cells: list[str]) -> str:
        first = cells[0].ljust(widths[0])
        rest = (c.rjust(w) for c, w in zip(cells[1:], widths[1:], strict=True))
        return "  ".join([first, *rest]).rstrip()

    return [line(header), line(["-" * w for w in widths]), *map(line, rows)]


def format_plan(plan: MemoryPlan) -> str:
    """The plan as ``scir plan`` prints it: the layout, a GiB table per stage, the verdict."""
    vpp = f" (VPP {plan.virtual_pipeline})" if plan.virtual_pipeline > 1 else ""
    judge = plan.judge_rows_per_pair * plan.micro_batch_size
    lines = [
        f"layout: {plan.nodes} node{'s' * (plan.nodes != 1)} × {plan.gpus_per_node} "
        f"GPU{'s' * (plan.gpus_per_node != 1)} = "
        f"{plan.world_size}: "
        f"TP {plan.tensor_parallel} × PP {plan.pipeline_parallel}{vpp} × DP "
        f"{plan.data_parallel}; sequence parallel {'on' if plan.sequence_parallel else 'off'}; "
        f"distributed optimizer {'on' if plan.distributed_optimizer else 'off'}",
        f"model: {_count(plan.total_params)} parameters (padded vocabulary "
        f"{plan.padded_vocab}), {plan.params_dtype}",
        f"micro-batch: {plan.micro_batch_size} pair(s) → {plan.rows_per_micro_batch} "
        f"sequences ({plan.rows_per_micro_batch - judge} policy + {judge} judge), "
        + (
            f"packed into at most {plan.packed_tokens} tokens"
            if plan.packed_tokens
            else f"rows padded to at most S = {plan.seq_length}"
        )
        + f"; {plan.num_micro_batches} micro-batches per step and DP rank",
        "",
    ]
    columns = [*plan.training, plan.generation]
    names = [f"training stage {s.stage}" for s in plan.training]
    header = ["GiB per GPU", *names, f"generation stage {plan.generation.stage}"]
    rows = [
        ["parameters", *(_count(s.params) for s in columns)],
        ["micro-batches in flight", *(f"{s.in_flight:g}" for s in plan.training), "-"],
    ]
    for component, label in _labels(plan).items():
        values = [getattr(s, component) for s in columns]
        if any(values):
            rows.append([label, *(f"{v / GIB:.2f}" if v else "-" for v in values)])
    rows.append(["total", *(f"{s.total / GIB:.2f}" for s in columns)])
    lines += _table(header, rows)
    lines += [
        "",
        f"usable: {plan.usable_gb:.1f} GiB per GPU ({plan.gpu_memory_gb:g} GiB − "
        f"{plan.headroom * 100:g} % headroom)",
        f"largest train.micro_batch_size that fits: {plan.max_micro_batch_size}",
        plan.verdict,
    ]
    return "\n".join(lines)
