"""How SmolLM2-135M-Instruct reads as a judge, per judge template and verdict prefix.

    .venv/bin/python benchmarks/judge_verdict_mass.py              # ~4 min on 2 CPU cores
    .venv/bin/python benchmarks/judge_verdict_mass.py --only default verdict
    .venv/bin/python benchmarks/judge_verdict_mass.py --hf-dir /path/to/hf-folder

For every candidate judge setting (``CANDIDATES``: the defaults, and the alternatives of
``megatron_scir.config.judge_templates.JUDGE_SETTINGS``) and the fixed labelled pairs below
(``PAIRS``: a prompt, a better and a worse response, the better one shown first in even pairs),
prints one table row:

- **verdict mass**: the probability the judge puts on its verdict/score tokens at the verdict
  position, averaged over the judge rows of a pair, then over pairs: the reference pass's
  ``reference/verdict_mass`` and training's ``judge/verdict_mass``;
- **position consistency** (pairwise): the fraction of pairs whose two presentation orders prefer
  the same response, sign(ℓ12) = sign(−ℓ21): ``reference/judge_position_consistency``;
- **accuracy**: pairwise, P_G (``judge.position_debias=mean_prob``) > ½ on the better response;
  pointwise, s(better) > s(worse);
- **first shown wins** (pairwise): the fraction of judge rows with p(A) > p(B), the position bias
  (½ is none);
- **bias** and **signal** (pairwise): the mean over pairs of the position bias |ℓ12 + ℓ21| / 2
  and of the content signal (ℓ12 − ℓ21) / 2 toward the better response, in nats; the two orders
  agree on a pair exactly when its signal outweighs its bias;
- the judge row's length in tokens, with SmolLM2's ChatML template and with the ``tiny`` preset's
  256-piece tokenizer (plain chat template, empty fields: what the preset's
  ``data.judge_max_length: 320`` must hold).

The numbers are what megatron-scir's judge reads: the judge text is
``judge_format(cfg.judge).judge_text(chat, ...)`` with ``ChatFormat("tokenizer", ...)`` (the
tokenizer's own ChatML template, ``data.chat_template=tokenizer``), encoded by ``chat.encode``,
and the verdict ids are ``candidate_ids(chat)``, the start-up check. The forward pass is
transformers' (float32, right-padded batches, the logits at each row's last token);
``tests/real_models/test_judge.py`` shows ``scir evaluate``'s judge log-odds equal this
computation within 1e-4 on SmolLM2.
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import torch

from megatron_scir.config import JudgeConfig
from megatron_scir.config.judge_templates import JUDGE_SETTINGS
from megatron_scir.data import ChatFormat, SentencePieceTokenizer
from megatron_scir.data.judges import judge_format
from megatron_scir.data.tokenizer import HFTokenizer
from megatron_scir.rewards.judge import expected_scores
from megatron_scir.testing.real_models import smollm2_hf_dir
from megatron_scir.testing.tokenizers import train_tiny_sentencepiece

PAIRS = (
    # (prompt, better response, worse response)
    ("What is the capital of France?", "The capital of France is Paris.",
     "The capital of France is Berlin."),
    ("How many legs does a spider have?", "A spider has eight legs.", "A spider has six legs."),
    ("What is 7 times 8?", "7 times 8 is 56.", "7 times 8 is 54."),
    ("Who wrote Romeo and Juliet?", "William Shakespeare wrote Romeo and Juliet.",
     "Romeo and Juliet was written by Charles Dickens."),
    ("What is the boiling point of water at sea level in Celsius?",
     "Water boils at 100 degrees Celsius at sea level.",
     "Water boils at 50 degrees Celsius at sea level."),
    ("Name a primary color.", "Red is a primary color.", "I like turtles."),
    ("Translate 'thank you' into Spanish.", "'Thank you' in Spanish is 'gracias'.",
     "'Thank you' in Spanish is 'bonjour'."),
    ("What is the largest planet in our solar system?",
     "Jupiter is the largest planet in our solar system.",
     "The largest planet in our solar system is Mars."),
    ("Give me a synonym for 'happy'.", "A synonym for 'happy' is 'joyful'.",
     "A synonym for 'happy' is 'sad'."),
    ("How many days are in a week?", "There are seven days in a week.", "Banana."),
    ("What gas do plants absorb from the air for photosynthesis?",
     "Plants absorb carbon dioxide for photosynthesis.",
     "Plants absorb helium for photosynthesis."),
    ("What is the opposite of 'hot'?", "The opposite of 'hot' is 'cold'.",
     "The opposite of 'hot' is 'warm'."),
    ("Write a short greeting for a friend.", "Hi! It's great to see you, I hope you're well.",
     "No."),
    ("What is the square root of 81?", "The square root of 81 is 9.",
     "The square root of 81 is 7."),
    ("Which animal is known as the king of the jungle?",
     "The lion is known as the king of the jungle.",
     "The goldfish is known as the king of the jungle."),
    ("How many continents are there?", "There are seven continents.",
     "I don't know what a continent is."),
    ("What do bees make?", "Bees make honey.", "Bees make plastic."),
    ("What is H2O commonly called?", "H2O is water.", "H2O is table salt."),
    ("Name the first month of the year.", "January is the first month of the year.",
     "The first month of the year is October."),
    ("What color is a clear daytime sky?", "A clear daytime sky is blue.",
     "Elephants are large mammals."),
    ("How many hours are in a day?", "A day has 24 hours.", "A day has 100 hours."),
    ("What is the freezing point of water in Fahrenheit?",
     "Water freezes at 32 degrees Fahrenheit.", "Water freezes at 212 degrees Fahrenheit."),
    ("Who painted the Mona Lisa?", "Leonardo da Vinci painted the Mona Lisa.",
     "The Mona Lisa was painted by Vincent van Gogh."),
    ("Suggest a name for a pet cat.", "How about 'Whiskers'?", "Cats are not pets."),
)
"""24 labelled pairs: the first response is the better one."""

CANDIDATES: dict[str, JudgeConfig] = {
    "default": JudgeConfig(),
    "pointwise": JudgeConfig(kind="pointwise"),
    **{name: JudgeConfig(**values) for name, values in JUDGE_SETTINGS.items()},
}
"""The judge settings compared: the defaults (pairwise, pointwise), then each named alternative."""

BATCH = 8


def _last_logps(model, seqs: list[list[int]], pad_id: int) -> torch.Tensor:
    """float64 log-softmax of the logits at each sequence's last token, right-padded batches."""
    out = []
    for start in range(0, len(seqs), BATCH):
        block = seqs[start : start + BATCH]
        width = max(map(len, block))
        ids = torch.tensor([s + [pad_id] * (width - len(s)) for s in block])
        mask = torch.tensor([[1] * len(s) + [0] * (width - len(s)) for s in block])
        with torch.no_grad():
            logits = model(input_ids=ids, attention_mask=mask).logits
        last = torch.tensor([len(s) - 1 for s in block])
        out.append(logits[torch.arange(len(block)), last].double().log_softmax(-1))
    return torch.cat(out)


def measure(model, chat: ChatFormat, tiny_chat: ChatFormat, judge: JudgeConfig) -> dict:
    """The table row of one judge setting."""
    fmt = judge_format(judge)
    ids = list(fmt.candidate_ids(chat))  # the start-up check: single distinct tokens in context
    empty = ("",) * (fmt.num_responses + 1)
    row = {"tiny tokens": len(tiny_chat.encode(fmt.judge_text(tiny_chat, *empty)))}
    seqs = []
    for i, (prompt, better, worse) in enumerate(PAIRS):
        y1, y2 = (better, worse) if i % 2 == 0 else (worse, better)
        seqs += [chat.encode(fmt.judge_text(chat, *fields)) for fields in
                 fmt.pair_fields(prompt, y1, y2)]
    logps = _last_logps(model, seqs, chat.tokenizer.pad_id)[:, ids]
    row["tokens"] = max(map(len, seqs))
    row["verdict mass"] = logps.exp().sum(-1).view(len(PAIRS), -1).mean(-1).mean().item()
    first_better = torch.tensor([i % 2 == 0 for i in range(len(PAIRS))])
    if fmt.num_responses == 1:  # pointwise: rows J(x, y1), J(x, y2) per pair
        scores = expected_scores(logps.float()).double().view(len(PAIRS), 2)
        row["accuracy"] = ((scores[:, 0] > scores[:, 1]) == first_better).double().mean().item()
        return row
    log_odds = (logps[:, 0] - logps[:, 1]).view(len(PAIRS), 2)
    l12, l21 = log_odds[:, 0], log_odds[:, 1]
    p_judge = 0.5 * (torch.sigmoid(l12) + torch.sigmoid(-l21))
    row["position consistency"] = (torch.sign(l12) * torch.sign(-l21) > 0).double().mean().item()
    row["accuracy"] = ((p_judge > 0.5) == first_better).double().mean().item()
    row["first shown wins"] = (log_odds > 0).double().mean().item()
    better_side = torch.where(first_better, 1.0, -1.0).double()
    row["bias"] = ((l12 + l21) / 2).abs().mean().item()
    row["signal"] = ((l12 - l21) / 2 * better_side).mean().item()
    return row


def _describe(judge: JudgeConfig) -> str:
    default = JudgeConfig()
    parts = [judge.kind]
    template_key = f"{judge.kind}_template"
    if getattr(judge, template_key) != getattr(default, template_key):
        parts.append("own template")
    parts.append(f"prefix {judge.verdict_prefix!r}")
    texts = judge.verdict_texts if judge.kind == "pairwise" else judge.score_texts
    parts.append(f"texts {texts[0]!r}…" if judge.kind == "pointwise" else f"texts {texts}")
    return ", ".join(parts)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--hf-dir", help="a Hugging Face folder (default: SmolLM2-135M-Instruct)")
    parser.add_argument("--only", nargs="+", choices=sorted(CANDIDATES), help="these rows only")
    args = parser.parse_args()
    from transformers import AutoModelForCausalLM  # lazy: the optional [hf] extra

    torch.manual_seed(0)
    hf_dir = Path(args.hf_dir) if args.hf_dir else smollm2_hf_dir()
    chat = ChatFormat("tokenizer", HFTokenizer(hf_dir))
    with tempfile.TemporaryDirectory() as tmp:
        tiny_chat = ChatFormat("plain", SentencePieceTokenizer(train_tiny_sentencepiece(tmp)))
    model = AutoModelForCausalLM.from_pretrained(str(hf_dir), dtype=torch.float32).eval()
    names = args.only or list(CANDIDATES)
    print(f"{hf_dir.name}: {len(PAIRS)} labelled pairs, data.chat_template=tokenizer\n")
    columns = ("verdict mass", "position consistency", "accuracy", "first shown wins",
               "bias", "signal", "tokens", "tiny tokens")
    print("| setting | judge | " + " | ".join(columns) + " |")
    print("|---" * (len(columns) + 2) + "|")
    for name in names:
        judge = CANDIDATES[name]
        row = measure(model, chat, tiny_chat, judge)
        cells = []
        for column in columns:
            value = row.get(column)
            cells.append("–" if value is None else f"{value:.3f}" if isinstance(value, float)
                         else str(value))
        print(f"| {name} | {_describe(judge)} | " + " | ".join(cells) + " |", flush=True)
    print("\nverdict mass: mean p(verdict tokens) at the verdict position; position consistency: "
          "the two orders prefer the same response; accuracy: P_G (mean_prob) > ½ on the better "
          "response (pointwise: s(better) > s(worse)); first shown wins: p(A) > p(B) per row; "
          "bias: |l12 + l21| / 2, signal: (l12 - l21) / 2 toward the better response (nats); "
          "tokens: longest judge row (SmolLM2), tiny tokens: empty-field judge row with the tiny "
          "preset's tokenizer")


if __name__ == "__main__":
    main()
