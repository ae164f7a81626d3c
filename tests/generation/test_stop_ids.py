"""A response ends at the first of the model's stop ids, as transformers' ``generate`` ends it.

Real chat models end a turn with more than the tokenizer's EOS: ``generation_config.json`` lists
several ``eos_token_id`` (Llama-3: ``<|end_of_text|>``, ``<|eom_id|>``, ``<|eot_id|>``) and the
chat template closes the assistant turn with its own token (ChatML ``<|im_end|>``). The folder
built here has both kinds: a ChatML template whose end-of-turn token is ``<|im_end|>`` and a
generation config listing ``</s>`` and ``<|eom|>``.

The generation tests use a random tiny Llama over that tokenizer whose output rows of
``<|im_end|>`` and ``<|eom|>`` are scaled copies of the rows of two tokens the model generates
greedily, so both stop ids are sampled after a few tokens. The reference is transformers'
``generate(do_sample=False, eos_token_id=<the stop ids>)`` on the same weights and prompt ids;
``scir generate`` (the real command, in a spawned gloo process) must give the same responses,
cut at the same place, with the same ``truncated`` flags, and the static engine the same tokens.
As in test_greedy_parity.py, the HF top-1/top-2 logit gap at every generated position is
asserted to exceed ``MIN_GAP``, so no argmax is a near-tie.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from megatron_scir.data import DataError, HFTokenizer
from megatron_scir.testing.distributed import run_distributed
from megatron_scir.testing.tokenizers import build_tiny_hf_tokenizer

CHATML = (
    "{% for message in messages %}<|im_start|>{{ message['role'] }}\n"
    "{{ message['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
EOS, IM_END, EOM = 2, 257, 258  # </s> of the tiny tokenizer; the two special tokens added here
STOP_IDS = (EOS, IM_END, EOM)
VOCAB = 259
MAX_NEW, MIN_GAP = 10, 1e-2
PROMPTS = ("Hi", "Tell me about the sea.", "Write a poem.", "What is two plus two?")


def _chat_tokenizer_folder(folder: Path, *, template: str = CHATML) -> Path:
    """The tiny HF tokenizer plus ``<|im_start|>`` 256, ``<|im_end|>`` 257, ``<|eom|>`` 258."""
    from transformers import AutoTokenizer

    build_tiny_hf_tokenizer(folder)
    tok = AutoTokenizer.from_pretrained(str(folder))
    tok.add_special_tokens({"additional_special_tokens": ["<|im_start|>", "<|im_end|>", "<|eom|>"]})
    tok.chat_template = template
    tok.save_pretrained(str(folder))
    assert tok.convert_tokens_to_ids(["</s>", "<|im_end|>", "<|eom|>"]) == [EOS, IM_END, EOM]
    return folder


def _write_json(path: Path, value: dict) -> None:
    path.write_text(json.dumps(value))


# --- the stop-id set is what the folder's files say ---


def test_stop_ids_are_eos_the_generation_config_ids_and_the_template_end_of_turn(tmp_path):
    folder = _chat_tokenizer_folder(tmp_path)
    _write_json(folder / "generation_config.json", {"eos_token_id": [EOS, EOM]})
    tok = HFTokenizer(folder)
    assert tok.eos_id == EOS
    assert tok.stop_ids == {EOS, IM_END, EOM}


def test_a_single_generation_config_id_counts_and_config_json_is_read_without_one(tmp_path):
    folder = _chat_tokenizer_folder(tmp_path)
    _write_json(folder / "config.json", {"eos_token_id": [EOM, 5]})
    assert HFTokenizer(folder).stop_ids == {EOS, IM_END, EOM, 5}  # as transformers falls back
    _write_json(folder / "generation_config.json", {"eos_token_id": EOM})
    assert HFTokenizer(folder).stop_ids == {EOS, IM_END, EOM}  # generation_config.json wins


def test_a_template_closing_the_turn_with_eos_or_plain_text_adds_no_stop_id(tmp_path):
    zephyr = build_tiny_hf_tokenizer(tmp_path / "zephyr")  # "<|assistant|>\n{content}</s>\n"
    assert HFTokenizer(zephyr).stop_ids == {EOS}
    plain = CHATML.replace("<|im_end|>\n", "\n\n")
    assert HFTokenizer(_chat_tokenizer_folder(tmp_path / "plain", template=plain)).stop_ids == {EOS}


def test_a_template_that_cannot_render_an_assistant_turn_keeps_the_other_stop_ids(tmp_path):
    strict = "{% if messages|length > 1 %}{{ raise_exception('one user turn only') }}{% endif %}"
    folder = _chat_tokenizer_folder(tmp_path, template=strict + CHATML)
    _write_json(folder / "generation_config.json", {"eos_token_id": [EOS, EOM]})
    assert HFTokenizer(folder).stop_ids == {EOS, EOM}


@pytest.mark.parametrize("value", ["</s>", [EOS, "x"], [EOS, VOCAB], -1, True])
def test_a_generation_config_eos_that_is_not_a_token_id_is_refused_by_file(tmp_path, value):
    folder = _chat_tokenizer_folder(tmp_path)
    _write_json(folder / "generation_config.json", {"eos_token_id": value})
    with pytest.raises(DataError, match="generation_config.json: eos_token_id"):
        HFTokenizer(folder)


def test_sentencepiece_tokenizers_stop_on_their_eos(sp_tokenizer):
    assert sp_tokenizer.stop_ids == {sp_tokenizer.eos_id}


# --- scir generate stops where transformers' generate stops ---


def _greedy(model, prompt: list[int], eos_token_id):
    ids = torch.tensor([prompt])
    with torch.no_grad():
        out = model.generate(
            ids,
            attention_mask=torch.ones_like(ids),
            max_new_tokens=MAX_NEW,
            do_sample=False,
            eos_token_id=eos_token_id,
            pad_token_id=3,
            output_logits=True,
            return_dict_in_generate=True,
        )
    new = out.sequences[0, len(prompt) :].tolist()
    top2 = torch.cat(out.logits).topk(2, dim=-1).values
    return new, (top2[:, 0] - top2[:, 1]).min().item()


@pytest.fixture(scope="module")
def hf_reference(tmp_path_factory):
    """(folder, prompt ids, HF greedy tokens per prompt (stop id last when it stopped), gap)."""
    from megatron_scir.data import ChatFormat
    from megatron_scir.testing.hf import tiny_hf_llama

    folder = tmp_path_factory.mktemp("stop_llama")
    model = tiny_hf_llama(vocab_size=VOCAB, weight_std=0.5, seed=3)
    _chat_tokenizer_folder(folder)
    tok = HFTokenizer(folder)
    chat = ChatFormat("tokenizer", tok)
    prompts = [chat.encode(chat.render(p)) for p in PROMPTS]
    # the output rows of <|im_end|> and <|eom|> become 1.2 × the rows of the tokens that
    # prompts 0 and 1 generate at steps 3 and 2: wherever those win, the stop id wins instead
    free = [_greedy(model, p, None)[0] for p in prompts[:2]]
    assert free[0][3] != free[1][2]  # two different rows, or the two stop ids would tie
    head = model.lm_head.weight.data
    head[IM_END], head[EOM] = 1.2 * head[free[0][3]], 1.2 * head[free[1][2]]
    model.generation_config.eos_token_id = [EOS, EOM]  # the template adds <|im_end|>
    model.save_pretrained(str(folder))
    stop_ids = sorted(HFTokenizer(folder).stop_ids)
    assert stop_ids == [EOS, IM_END, EOM]
    runs = [_greedy(model, p, stop_ids) for p in prompts]
    return folder, prompts, [new for new, _ in runs], min(gap for _, gap in runs)


def _scir_generate(rank, world_size, folder, prompts, out_dir):
    from megatron_scir.cli import main
    from megatron_scir.convert import config_from_hf, load_hf_into_model
    from megatron_scir.data import read_records
    from megatron_scir.generation import SamplingSettings
    from megatron_scir.generation.mcore_inference import build_backend
    from megatron_scir.models import build_model_chunks
    from megatron_scir.parallel.runtime import parallel_world

    overrides = [
        "data.chat_template=tokenizer",
        "data.max_prompt_length=32",
        "generation.temperature=0",
        "generation.num_responses=1",
        f"generation.max_new_tokens={MAX_NEW}",
        "generation.max_batch_size=4",
    ]
    prompt_file = Path(out_dir) / "prompts.jsonl"
    rows = [json.dumps({"id": i, "prompt": p}) + "\n" for i, p in enumerate(PROMPTS)]
    prompt_file.write_text("".join(rows))
    argv = ["generate", "--hf-dir", folder, "--config", "tiny", "--no-progress"]
    argv += ["--prompts", str(prompt_file), "--out", f"{out_dir}/gen.jsonl", *overrides]
    exit_code = main(argv)
    cfg = config_from_hf(folder, "tiny", overrides)
    with parallel_world(cfg.parallel):
        (model,) = build_model_chunks(cfg)
        load_hf_into_model([model], folder, cfg, progress=False)
        with torch.no_grad(), build_backend(model, cfg, HFTokenizer(folder)) as backend:
            completions = backend.generate(
                prompts, SamplingSettings.greedy_decoding(MAX_NEW), seed=0
            )
    records = read_records(f"{out_dir}/gen.jsonl", "generations")[0]
    return exit_code, records, completions


@pytest.fixture(scope="module")
def scir_outputs(hf_reference, tmp_path_factory):
    folder, prompts, _, _ = hf_reference
    out_dir = str(tmp_path_factory.mktemp("stop_generations"))
    (result,) = run_distributed(_scir_generate, 1, args=(str(folder), prompts, out_dir))
    return result


@pytest.mark.dist
def test_the_reference_stops_on_each_kind_of_stop_id_without_a_near_tie(hf_reference):
    *_, continuations, min_gap = hf_reference
    assert min_gap > MIN_GAP, f"top-2 logit gap {min_gap:.2e}: pick another seed or scale"
    ends = [c[-1] for c in continuations if c[-1] in STOP_IDS]
    assert IM_END in ends and EOM in ends  # the template's token and a generation_config id
    assert all(len(c) > 1 for c in continuations)  # each stop came after some text
    assert any(c[-1] not in STOP_IDS for c in continuations)  # and one row ran to the budget


@pytest.mark.dist
def test_scir_generate_stops_at_the_first_stop_id_like_transformers_generate(
    hf_reference, scir_outputs
):
    folder, _, continuations, _ = hf_reference
    exit_code, records, _ = scir_outputs
    assert exit_code == 0
    tok = HFTokenizer(folder)
    for record, new in zip(records, continuations, strict=True):
        stopped = new[-1] in STOP_IDS
        expected = tok.decode(new[:-1] if stopped else new)
        assert (record.responses[0], record.truncated[0]) == (expected, not stopped), record


@pytest.mark.dist
def test_the_static_engine_gives_transformers_tokens_without_the_stop_id(
    hf_reference, scir_outputs
):
    _, _, continuations, _ = hf_reference
    *_, completions = scir_outputs
    for completion, new in zip(completions, continuations, strict=True):
        stopped = new[-1] in STOP_IDS
        assert list(completion.token_ids) == (new[:-1] if stopped else new)
        assert completion.hit_eos == stopped
