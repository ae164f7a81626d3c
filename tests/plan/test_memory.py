"""``scir plan``: the parameter count, Megatron's bytes-per-parameter table, Korthikanti's
activation formulas, public 70B layouts, and the command — all without torch (but one count
compared with a transformers model)."""

from __future__ import annotations

import dataclasses
import json
import math
import subprocess
import sys
from pathlib import Path

import pytest

from megatron_scir.config import ConfigError, ModelConfig, load_config
from megatron_scir.models.shapes import mcore_tensor_shapes, padded_vocab_size
from megatron_scir.plan.memory import (
    GIB,
    format_plan,
    in_flight_micro_batches,
    korthikanti_layer_tensors,
    layer_activation_bytes,
    llama_layer_tensors,
    plan_memory,
    stage_params,
    total_params,
)

ROOT = Path(__file__).resolve().parents[2]
S4096 = [  # a 4096-token DPO micro-batch: no judge rows, S = prompt + response budget
    "scir.mode=dpo",
    "data.max_prompt_length=2048",
    "data.max_response_length=2048",
    "data.judge_max_length=4096",
]
# Megatron-Bridge's Llama-3-70B SFT layout on 32 H100s (performance/configs/llama:
# _LLAMA3_70B_SFT_CONFIG_H100: TP 4, PP 4, VP 5, micro batch 1, global batch 32, seq 4096)
BRIDGE_SFT = [
    "parallel.tensor_model_parallel_size=4",
    "parallel.pipeline_model_parallel_size=4",
    "parallel.virtual_pipeline_model_parallel_size=5",
    "train.global_batch_size=32",
    *S4096,
]
# a Llama-3-70B DPO layout on 2 nodes: TP 8, PP 2, bf16, distributed optimizer, full recompute
DPO_2_NODES = [
    "parallel.tensor_model_parallel_size=8",
    "parallel.pipeline_model_parallel_size=2",
    "model.fp8=null",
    *S4096,
]


def _plan(preset: str, overrides=(), *, nodes: int = 1, gpus: int = 8, **kwargs):
    return plan_memory(
        load_config(preset, list(overrides)), nodes=nodes, gpus_per_node=gpus, **kwargs
    )


# --- parameters ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("preset", "tp", "pp"),
    [("llama3_70b_fp8", 8, 4), ("llama3_70b_fp8", 4, 8), ("mistral_7b", 4, 1), ("tiny", 1, 2)],
)
def test_stage_parameters_summed_over_tp_and_pp_are_the_model(preset, tp, pp):
    m = load_config(preset).model
    stages = [stage_params(m, tp=tp, pp=pp, stage=s) for s in range(pp)]
    # TP-split tensors count t times (one slice per rank), the norms once (whole on every rank)
    counted = sum(s.sharded * tp + s.replicated for s in stages)
    vocab = padded_vocab_size(m.vocab_size, m.make_vocab_size_divisible_by, tp)
    table = mcore_tensor_shapes(m, padded_vocab=vocab)
    assert counted == sum(math.prod(shape) for shape in table.values())
    assert counted == total_params(m, tp=tp)


@pytest.mark.parametrize(
    ("preset", "published"), [("llama3_70b_fp8", 70.55e9), ("mistral_7b", 7.25e9)]
)
def test_the_presets_have_their_published_parameter_counts(preset, published):
    assert total_params(load_config(preset).model, tp=1) == pytest.approx(published, rel=5e-3)


def test_a_tied_model_counts_its_embeddings_once_as_transformers_does(tmp_path):
    pytest.importorskip("transformers")
    from megatron_scir.convert import config_from_hf
    from megatron_scir.testing.hf import tiny_hf_llama

    hf = tiny_hf_llama(tmp_path, vocab_size=256, head_dim=32, tie_word_embeddings=True)
    m = config_from_hf(tmp_path).model  # 256 rows: padded to itself at TP=1
    assert m.share_embeddings_and_output_weights
    assert total_params(m, tp=1) == hf.num_parameters()
    untied = dataclasses.replace(m, share_embeddings_and_output_weights=False)
    assert total_params(untied, tp=1) - total_params(m, tp=1) == 256 * m.hidden_size


@pytest.mark.parametrize("family", ["qwen2", "qwen3"])
def test_a_qwen_model_has_the_parameters_transformers_counts(tmp_path, family):
    pytest.importorskip("transformers")
    from megatron_scir.convert import config_from_hf
    from megatron_scir.testing import hf

    build = {"qwen2": hf.tiny_hf_qwen2, "qwen3": hf.tiny_hf_qwen3}[family]
    model = build(tmp_path, vocab_size=256)  # padded to itself at TP=1
    m = config_from_hf(tmp_path).model
    assert total_params(m, tp=1) == model.num_parameters()
    plain = dataclasses.replace(m, add_qkv_bias=False, qk_layernorm=False)
    qwen, llama = (stage_params(x, tp=2, pp=1, stage=0) for x in (m, plain))
    if family == "qwen2":  # the qkv bias is split over TP, and is no GEMM weight
        bias = (m.num_attention_heads + 2 * m.num_query_groups) * m.head_dim * m.num_layers
        assert qwen.sharded - llama.sharded == bias // 2
        assert (qwen.linear, qwen.replicated) == (llama.linear, llama.replicated)
    else:  # the q/k norms are whole on every TP rank
        assert qwen.replicated - llama.replicated == 2 * m.head_dim * m.num_layers
        assert (qwen.sharded, qwen.linear) == (llama.sharded, llama.linear)


def test_a_tied_model_under_pp_holds_a_copy_of_the_embeddings_on_the_last_stage():
    m = dataclasses.replace(
        load_config("llama3_8b").model, share_embeddings_and_output_weights=True
    )
    embedding = padded_vocab_size(m.vocab_size, m.make_vocab_size_divisible_by, 4) * 4096 // 4
    first, middle, last = (stage_params(m, tp=4, pp=4, stage=s) for s in (0, 1, 3))
    assert first.sharded - middle.sharded == embedding
    assert last.sharded - middle.sharded == embedding  # the output layer's copy
    single = stage_params(m, tp=4, pp=1, stage=0)
    assert single.sharded * 4 + single.replicated == total_params(m, tp=4)  # once at PP=1


def test_the_first_stage_holds_the_embedding_and_the_last_the_output_layer():
    m = load_config("llama3_70b_fp8").model
    first, middle, last = (stage_params(m, tp=8, pp=4, stage=s) for s in (0, 1, 3))
    embedding = 129024 * 8192 // 8
    assert first.sharded - middle.sharded == embedding
    assert last.sharded - middle.sharded == embedding
    assert last.replicated - middle.replicated == 8192  # the final norm
    assert middle.linear == middle.sharded  # a middle stage holds transformer linears only


# --- Megatron's bytes per parameter -------------------------------------------------------------


@pytest.mark.parametrize(
    ("dtype", "distributed", "expected"),
    [
        ("bfloat16", False, lambda dp: 18),
        ("bfloat16", True, lambda dp: 6 + 12 / dp),
        ("float32", False, lambda dp: 16),
        ("float32", True, lambda dp: 8 + 8 / dp),
    ],
)
def test_weights_gradients_and_adam_follow_megatrons_bytes_per_parameter(
    dtype, distributed, expected
):
    overrides = [
        f"model.params_dtype={dtype}",
        f"parallel.use_distributed_optimizer={str(distributed).lower()}",
        "parallel.overlap_param_gather=false",
        "model.fp8=null",
    ]
    plan = _plan("llama3_8b", overrides, nodes=2, gpu_memory_gb=1000)  # TP 4: DP 4
    assert plan.data_parallel == 4
    stage = plan.training[0]
    state = stage.weights + stage.gradients + stage.optimizer
    assert state == pytest.approx(expected(4) * stage.params, rel=1e-12)


def test_fp8_caches_two_bytes_per_transformer_linear_weight():
    m = load_config("llama3_70b_fp8").model
    all_fp8 = _plan("llama3_70b_fp8", ["model.first_last_layers_bf16=false"], nodes=4)
    linears = stage_params(m, tp=8, pp=4, stage=0).linear
    assert all_fp8.training[0].fp8_weight_copies == 2 * linears
    assert _plan("llama3_70b_fp8", ["model.fp8=null"], nodes=4).training[0].fp8_weight_copies == 0
    # the preset keeps the first layer (stage 0) and the last (stage 3) of 20 per stage in bf16
    plan = _plan("llama3_70b_fp8", nodes=4)
    assert m.first_last_layers_bf16
    for stage in plan.training:
        assert stage.fp8_weight_copies == pytest.approx(2 * linears * 19 / 20, rel=1e-12)
    two = _plan("llama3_70b_fp8", ["model.num_layers_at_start_in_bf16=2"], nodes=4)
    assert two.training[0].fp8_weight_copies == pytest.approx(2 * linears * 18 / 20, rel=1e-12)


def test_bf16_gradient_buffers_cost_two_bytes_per_parameter():
    fp32 = _plan("llama3_70b_fp8", nodes=4).training[0]
    bf16 = _plan("llama3_70b_fp8", ["parallel.grad_reduce_in_fp32=false"], nodes=4).training[0]
    assert fp32.gradients == 4 * fp32.params and bf16.gradients == 2 * bf16.params
    assert "gradients (bfloat16 main_grad)" in format_plan(
        _plan("llama3_70b_fp8", ["parallel.grad_reduce_in_fp32=false"], nodes=4)
    )


# --- activations --------------------------------------------------------------------------------

# GPT-3 175B, the paper's own setting: a = 96, h = 12288, s = 2048, 4h MLP, plain MHA
GPT3 = ModelConfig(
    num_layers=96,
    hidden_size=12288,
    ffn_hidden_size=4 * 12288,
    num_attention_heads=96,
    num_query_groups=96,
    vocab_size=51200,
)


@pytest.mark.parametrize(("tp", "sp"), [(1, False), (8, False), (8, True)])
@pytest.mark.parametrize("recompute", [None, "selective", "full"])
def test_the_per_layer_activations_reproduce_korthikanti_table_2(tp, sp, recompute):
    s, b, h, a, t = 2048, 1, 12288, 96, tp
    sbh = s * b * h
    scores = 5 * a * s / h
    expected = {  # Korthikanti et al. 2022, Table 2
        (None, False): sbh * (10 + 24 / t + scores / t),
        (None, True): sbh * (34 / t + scores / t),
        ("selective", False): sbh * (10 + 24 / t),
        ("selective", True): sbh * 34 / t,
        ("full", False): 2 * sbh,
        ("full", True): 2 * sbh / t,
    }[recompute, sp]
    got = layer_activation_bytes(
        korthikanti_layer_tensors(GPT3),
        seq_length=s,
        rows=b,
        tp=t,
        sequence_parallel=sp,
        recompute=recompute,
    )
    assert got == pytest.approx(expected, rel=1e-12)
    if tp == 1 and recompute is None:
        assert got == pytest.approx(sbh * (34 + 5 * a * s / h), rel=1e-12)


def test_a_llama_layer_keeps_its_gqa_and_swiglu_tensors_and_no_scores_with_fused_attention():
    m = load_config("llama3_70b_fp8").model  # te: fused attention
    h, f, q, kv, t = 8192, 28672, 64 * 128, 8 * 128, 8
    per_token = 2 * (4 * h / t + (2 * q + 2 * kv + 4 * f) / t)  # SP: the 4h part is split too
    layer = dict(seq_length=2048, rows=4, tp=t, sequence_parallel=True)
    tensors = llama_layer_tensors(m)
    assert layer_activation_bytes(tensors, recompute=None, **layer) == 2048 * 4 * per_token
    assert layer_activation_bytes(tensors, recompute="selective", **layer) == 2048 * 4 * per_token
    assert layer_activation_bytes(tensors, recompute="full", **layer) == 2048 * 4 * 2 * h / t
    local = llama_layer_tensors(
        load_config("llama3_70b_fp8", ["model.fp8=null", "model.transformer_impl=local"]).model
    )
    scores = layer_activation_bytes(local, recompute=None, **layer) - layer_activation_bytes(
        local, recompute="selective", **layer
    )
    assert scores == 2048 * 4 * 64 * 2048 * (4 + 2) / t  # float32 softmax + its bf16 copy


def test_pipeline_stages_hold_megatrons_in_flight_micro_batches():
    p, v = 4, 5
    assert in_flight_micro_batches(pp=p, vpp=v, num_micro_batches=64, stage=0) == pytest.approx(
        p * (1 + (p - 1) / (p * v))  # Narayanan et al. 2021; theoretical_memory_usage.py
    )
    assert in_flight_micro_batches(pp=p, vpp=1, num_micro_batches=64, stage=0) == p
    assert in_flight_micro_batches(pp=p, vpp=1, num_micro_batches=2, stage=0) == 2
    assert in_flight_micro_batches(pp=p, vpp=1, num_micro_batches=64, stage=p - 1) == 1
    assert in_flight_micro_batches(pp=1, vpp=1, num_micro_batches=64, stage=0) == 1


@pytest.mark.parametrize(
    ("overrides", "rows"),
    [
        ([], 2),
        (["judge.position_debias=none"], 1),
        (["judge.kind=pointwise"], 2),
        (["scir.mode=dpo"], 0),
        (["scir.mode=srlm"], 0),
    ],
)
def test_judge_rows_per_pair_follow_the_micro_batch_layout(overrides, rows):
    from megatron_scir.data.layout import MicroBatchLayout  # torch-free, as the planner

    cfg = load_config("tiny", overrides)
    layout = MicroBatchLayout.for_training(cfg)
    assert layout.judge_rows_per_pair == rows
    plan = plan_memory(cfg, nodes=1, gpus_per_node=1)
    assert plan.judge_rows_per_pair == rows
    assert (plan.rows_per_micro_batch, plan.seq_length) == (layout.num_rows, layout.seq_length)


def test_the_logits_term_is_one_chunk_of_response_positions_and_the_judge_rows_at_one():
    plan = _plan("llama3_70b_fp8", ["train.micro_batch_size=2"], nodes=4)
    vocab_shard = 129024 // 8
    # 4 policy rows × 512 response tokens = 2048 positions, in chunks of 1024
    assert plan.training[-1].logits == 2 * 4 * (1024 + 2 * 2) * vocab_shard
    assert plan.training[0].logits == 0
    small = _plan("llama3_70b_fp8", ["train.logprob_chunk_size=4096"], nodes=4)
    assert small.training[-1].logits == 2 * 4 * (2 * 512 + 2) * vocab_shard  # all of them


# --- public layouts -----------------------------------------------------------------------------


def test_megatron_bridge_70b_sft_layout_fits_32_h100s_with_full_recompute():
    plan = _plan("llama3_70b_fp8", BRIDGE_SFT, nodes=4)
    assert (plan.tensor_parallel, plan.pipeline_parallel, plan.data_parallel) == (4, 4, 2)
    assert plan.fits, plan.verdict
    assert plan.verdict.startswith("fits: ")
    # without recompute the DPO pair's 2 rows × 4096 in 4.6 in-flight micro-batches do not
    no_recompute = _plan(
        "llama3_70b_fp8",
        [*BRIDGE_SFT, "model.recompute_granularity=null", "model.recompute_method=null"],
        nodes=4,
    )
    assert not no_recompute.fits
    assert "model.recompute_granularity=full" in no_recompute.verdict


def test_70b_dpo_on_two_nodes_of_tp8_pp2_fits_with_bf16_mixed_optimizer_memory():
    # NVIDIA's answer on Llama3-70B-DPO-Chat (huggingface.co/nvidia/Llama3-70B-DPO-Chat,
    # discussion 1): "minimum 2 nodes" of 8 × 80 GB at TP 8 PP 2, DP 1, "assuming NeMo's
    # bf16-mixed mode": distributed_fused_adam keeps 16-bit remainders of the fp32 master
    # weights, 16 bytes/param. Ours at 16 bytes/param: bf16 gradient buffers.
    plan = _plan("llama3_70b_fp8", [*DPO_2_NODES, "parallel.grad_reduce_in_fp32=false"], nodes=2)
    stage = plan.training_peak
    assert stage.weights + stage.gradients + stage.optimizer == 16 * stage.params
    assert plan.fits, plan.verdict
    assert plan.max_micro_batch_size >= 1
    # Megatron-Core's default (fp32 main_grad, fp32 master): 18 bytes × 4.41B parameters = 74
    # GiB at DP 1, where the distributed optimizer shards nothing: the planner says so and
    # names both ways out
    default = _plan("llama3_70b_fp8", DPO_2_NODES, nodes=2)
    state = default.training_peak
    assert state.weights + state.gradients + state.optimizer == 18 * state.params
    assert not default.fits
    assert "parallel.grad_reduce_in_fp32=false (→ 70.3 GiB, fits)" in default.verdict
    assert "--nodes 4" in default.verdict
    assert _plan("llama3_70b_fp8", DPO_2_NODES, nodes=2, gpu_memory_gb=141).fits  # H200
    assert _plan("llama3_70b_fp8", DPO_2_NODES, nodes=4).fits  # DP 2


def test_70b_on_one_gpu_is_clearly_infeasible():
    single = [
        "parallel.tensor_model_parallel_size=1",
        "parallel.pipeline_model_parallel_size=1",
        "parallel.sequence_parallel=false",
    ]
    plan = _plan("llama3_70b_fp8", single, gpus=1)
    assert plan.training_peak.total > 10 * plan.usable_gb * GIB
    assert plan.max_micro_batch_size == 0
    assert plan.verdict.startswith("does not fit: training needs")


@pytest.mark.parametrize(("nodes", "peak", "max_k"), [(4, 46.4, 16), (8, 33.7, 32)])
def test_the_70b_preset_fits_four_and_eight_nodes_of_80gb(nodes, peak, max_k):
    plan = _plan("llama3_70b_fp8", nodes=nodes)
    assert plan.fits, plan.verdict
    assert plan.training_peak.total / GIB == pytest.approx(peak, abs=0.05)
    assert plan.max_micro_batch_size == max_k
    assert plan.generation.total < plan.training_peak.total


def test_the_largest_micro_batch_grows_with_gpu_memory():
    sizes = [
        _plan("llama3_70b_fp8", nodes=4, gpu_memory_gb=gb).max_micro_batch_size
        for gb in (40, 50, 60, 80, 141, 400)
    ]
    assert sizes == sorted(sizes) and sizes[0] < sizes[-1]
    assert sizes[0] == 0


def test_a_world_not_divisible_by_tp_times_pp_names_the_keys():
    with pytest.raises(ConfigError) as err:
        _plan("llama3_70b_fp8", nodes=1)
    message = str(err.value)
    assert "parallel.tensor_model_parallel_size" in message
    assert "parallel.pipeline_model_parallel_size" in message
    assert "--nodes 1" in message


def test_the_report_shows_every_stage_and_the_verdict():
    plan = _plan("llama3_70b_fp8", nodes=4)
    text = format_plan(plan)
    shown = ("training stage 0", "training stage 3", "generation stage", "KV cache", plan.verdict)
    assert all(line in text for line in shown)
    assert json.loads(json.dumps(plan.to_dict()))["fits"] is True


# --- the command --------------------------------------------------------------------------------

# Runs `scir plan` as the registered command once megatron_scir.cli lists it, before that through
# the module's own register(); either way in a fresh interpreter that must not import torch.
_COMMAND = """
import argparse, sys
import megatron_scir.cli as cli
from megatron_scir.config.arguments import run_command
argv = sys.argv[1:]
if "megatron_scir.cli.plan" in cli.COMMAND_MODULES:
    status = cli.main(argv)
else:
    from megatron_scir.cli.plan import register
    parser = argparse.ArgumentParser(prog="scir")
    register(parser.add_subparsers())
    args = parser.parse_args(argv)
    status = run_command(args.func, args)
heavy = sorted(m for m in ("torch", "megatron.core") if m in sys.modules)
print("IMPORTED", heavy, file=sys.stderr)
sys.exit(status)
"""


def _scir_plan(*argv: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-c", _COMMAND, "plan", *argv],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_scir_plan_prints_json_without_importing_torch():
    done = _scir_plan("--config", "llama3_70b_fp8", "--nodes", "8", "--json")
    assert done.returncode == 0, done.stderr
    assert "IMPORTED []" in done.stderr
    plan = json.loads(done.stdout)
    assert plan["fits"] and plan["data_parallel"] == 2
    assert plan["training"][0]["optimizer_gib"] == pytest.approx(12.69, abs=0.01)


def test_scir_plan_reports_a_bad_world_as_a_user_error():
    done = _scir_plan("--config", "llama3_70b_fp8", "--nodes", "3")
    assert done.returncode == 2
    assert "scir plan: error: world size 24" in done.stderr
    assert "Traceback" not in done.stderr
