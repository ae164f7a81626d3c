"""SmolLM2-135M-Instruct's float32 logits under tensor and pipeline parallelism equal transformers'.

SmolLM2 ties its output layer to the input embedding, and its 9 heads / 3 KV groups make TP=3 its
smallest tensor-parallel layout (TP=2 is refused naming the heads). Two gloo runs load the HF folder
straight into Megatron chunks (``load_hf_into_model``, as ``scir generate --hf-dir`` does):
TP=3 (3 processes: the embedding and the tied output layer both split over the vocabulary) and
PP=2 (2 processes: the first stage holds the embedding, the last its copy as the output layer,
loaded from the one HF tensor). The logits of two real ChatML conversations must equal
transformers' within ``ATOL`` (float32 over 30 layers; measured 8.1e-5 at TP=3 and 8.6e-5 at PP=2
with logits up to 37.6 on the dev machine), and every argmax must agree. About 20 s on 2 CPU cores.
"""

from __future__ import annotations

import pytest
import torch

from megatron_scir.testing.distributed import run_distributed

pytestmark = pytest.mark.real_model

ATOL = 5e-4
LAYOUTS = {
    "tp3": (3, ["parallel.tensor_model_parallel_size=3"]),
    "pp2": (2, ["parallel.pipeline_model_parallel_size=2"]),
}
CONVERSATIONS = (
    ("What is the capital of France?", "The capital of France is Paris."),
    ("Write a haiku about the sea.", "Waves fold into foam, salt wind carries gull voices"),
)


def _logits(rank, world_size, hf_dir: str, overrides: list[str], tokens: torch.Tensor):
    from megatron_scir.convert import config_from_hf, load_hf_into_model
    from megatron_scir.models import build_model_chunks
    from megatron_scir.parallel.state import destroy_model_parallel, initialize_model_parallel
    from megatron_scir.testing.hf import mcore_logits

    cfg = config_from_hf(hf_dir, "chat", overrides)
    assert cfg.model.share_embeddings_and_output_weights
    initialize_model_parallel(cfg.parallel)
    chunks = build_model_chunks(cfg, init_weights=False)
    load_hf_into_model(chunks, hf_dir, cfg, progress=False)
    logits = mcore_logits(chunks, tokens)
    destroy_model_parallel()
    return logits


@pytest.fixture(scope="module")
def tokens(smollm2_dir) -> torch.Tensor:
    """Two rendered conversations (system prompt included), cut to the shorter one's length."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(smollm2_dir))
    texts = [
        tokenizer.apply_chat_template(
            [{"role": "user", "content": q}, {"role": "assistant", "content": a}], tokenize=False
        )
        for q, a in CONVERSATIONS
    ]
    rows = [tokenizer(text, add_special_tokens=False).input_ids for text in texts]
    length = min(len(r) for r in rows)
    assert length > 40  # the system prompt alone is ~30 tokens
    return torch.tensor([r[:length] for r in rows])


@pytest.fixture(scope="module")
def reference(smollm2_dir, tokens) -> torch.Tensor:
    from megatron_scir.testing.hf import hf_logits

    return hf_logits(smollm2_dir, tokens)


@pytest.mark.parametrize("layout", list(LAYOUTS))
def test_smollm2_gives_the_transformers_logits_in_float32(
    smollm2_dir, tokens, reference, layout, record_property
):
    world_size, overrides = LAYOUTS[layout]
    results = run_distributed(
        _logits, world_size, args=(str(smollm2_dir), overrides, tokens), timeout=600
    )
    last = results[-1]  # the last pipeline stage (at TP=3 every rank holds the gathered logits)
    for other in results[:-1]:
        assert other is None if layout == "pp2" else torch.equal(other, last)
    vocab = reference.shape[-1]
    diff = (last[..., :vocab] - reference).abs().max().item()
    record_property("max_abs_diff", diff)
    print(f"\nSmolLM2 {layout}: max |logits - transformers| = {diff:.3g} "
          f"(|logits| up to {reference.abs().max().item():.3g})")
    assert diff < ATOL
    assert torch.equal(last[..., :vocab].argmax(-1), reference.argmax(-1))
