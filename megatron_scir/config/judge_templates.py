"""Default judge instructions (``judge.pairwise_template`` / ``judge.pointwise_template``).

The pairwise text follows the MT-Bench pairwise judge prompt, shortened to a single-letter verdict;
the pointwise text is the Self-Rewarding LM's additive 5-point rubric (Yuan et al., 2024). Both are
rendered as a user turn; the verdict/score token is read right after the assistant header.
"""

PAIRWISE_TEMPLATE = (
    "Please act as an impartial judge and evaluate the quality of the responses provided by "
    "two AI assistants to the user question below. Choose the assistant that follows the "
    "user's instructions and answers the question better.\n\n"
    "[User Question]\n{prompt}\n\n"
    "[The Start of Assistant A's Answer]\n{response_a}\n[The End of Assistant A's Answer]\n\n"
    "[The Start of Assistant B's Answer]\n{response_b}\n[The End of Assistant B's Answer]\n\n"
    "Answer with a single letter, A or B."
)
POINTWISE_TEMPLATE = (
    "Review the user's question and the corresponding response using the additive 5-point "
    "scoring system described below. Points are accumulated based on the satisfaction of each "
    "criterion:\n"
    "- Add 1 point if the response is relevant and provides some information related to the "
    "user's inquiry, even if it is incomplete or contains some irrelevant content.\n"
    "- Add another point if the response addresses a substantial portion of the user's "
    "question, but does not completely resolve the query or provide a direct answer.\n"
    "- Award a third point if the response answers the basic elements of the user's question "
    "in a useful way, regardless of whether it seems to have been written by an AI Assistant.\n"
    "- Grant a fourth point if the response is clearly written from an AI Assistant's "
    "perspective, addressing the user's question directly and comprehensively.\n"
    "- Bestow a fifth point for a response that is impeccably tailored to the user's question "
    "by an AI Assistant, without extraneous information, reflecting expert knowledge.\n\n"
    "User: {prompt}\n<response>{response}</response>\n\n"
    "Answer with the total score only, a single digit from 0 to 5."
)

PAIRWISE_SHORT_TEMPLATE = (
    "Question: {prompt}\n\n"
    "Response A: {response_a}\n\n"
    "Response B: {response_b}\n\n"
    "Which response answers the question better, A or B?"
)
"""A short pairwise instruction that ends on the verdict question (for ``JUDGE_SETTINGS``)."""

JUDGE_SETTINGS: dict[str, dict[str, object]] = {
    "verdict-prefix": {"verdict_prefix": "Verdict:", "verdict_texts": [" A", " B"]},
    "assistant-prefix": {
        "verdict_prefix": "The better answer is from Assistant",
        "verdict_texts": [" A", " B"],
    },
    "short-template": {
        "pairwise_template": PAIRWISE_SHORT_TEMPLATE,
        "verdict_prefix": "The better response is Response",
        "verdict_texts": [" A", " B"],
    },
    "pointwise-score-prefix": {"kind": "pointwise", "verdict_prefix": "Score: "},
}
"""Named alternatives to the ``judge`` defaults (``JudgeConfig`` field values), compared on
SmolLM2-135M-Instruct by ``benchmarks/judge_verdict_mass.py`` (docs/data.md, "Verdict mass on a
real model"). A prefix that starts the verdict sentence puts most of the next-token mass on the
verdict tokens; the texts carry the word-initial space (" A": one token "ĠA" in byte-level BPE,
"▁A" in SentencePiece) because a prefix ending in a space would merge with them. Score digits
never merge with a space in SmolLM2's tokenizer, so ``"Score: "`` works there (not with the tiny
256-piece SentencePiece model). Use one as overrides, e.g. ``judge.verdict_prefix=Verdict:
'judge.verdict_texts=[" A", " B"]'``."""
