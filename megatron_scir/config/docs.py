"""Render docs/configuration.md from the dataclass field docstrings (the single source).

    python -m megatron_scir.config.docs > docs/configuration.md

A test checks that the committed page equals this output, so the page never drifts from the code.
"""

from __future__ import annotations

import ast
import dataclasses
import inspect
import typing

from megatron_scir.config import schema
from megatron_scir.config.load import type_name

HEADER = """# Configuration reference

Generated from `megatron_scir/config/schema.py` by `python -m megatron_scir.config.docs`; do not
edit by hand. Every key is `section.field`; set it in a YAML file or on the command line:

```bash
scir config --config llama3_70b_fp8 parallel.pipeline_model_parallel_size=8 ++scir.beta=0.05
```

`a.b=c` and `++a.b=c` (NeMo's habit) both set a key of the schema; keys outside it are refused
with the closest valid names. Values are parsed as YAML (`null`, `true`, `1e-6`, `[a, b]`).
Presets: `tiny`, `chat`, `mistral_7b`, `llama3_8b`, `llama3_70b_fp8` (`scir config --list-presets`).
`scir generate / sft / train / iterate / evaluate` without `--config` use `chat` for a pretrained
model (`--hf-dir`, or a checkpoint carrying a Hugging Face tokenizer: 512-token prompt and response
budgets shrunk to the model's positions where it has fewer than 2048, the tokenizer's own chat
template) and `tiny` otherwise.
Cross-section rules (TP divides heads and query groups, PP × VPP divides layers, FP8 needs the `te`
spec, sequence budgets fit `model.max_position_embeddings`, ...) live in `config/validate.py`.
"""


def field_docs(cls: type) -> dict[str, str]:
    """Attribute docstrings (the string literal right under each field) of a dataclass."""
    tree = ast.parse(inspect.getsource(cls))
    body = tree.body[0].body
    docs = {}
    for node, nxt in zip(body, body[1:], strict=False):
        if isinstance(node, ast.AnnAssign) and isinstance(nxt, ast.Expr):
            if isinstance(nxt.value, ast.Constant) and isinstance(nxt.value.value, str):
                docs[node.target.id] = " ".join(nxt.value.value.split())
    return docs


def _default(f: dataclasses.Field) -> str:
    value = f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default
    text = repr(value) if not isinstance(value, str) else value
    if value is None:
        text = "null"
    if len(text) > 40:
        text = "(long text; see schema.py)"
    return f"`{text}`".replace("|", "\\|")


def render() -> str:
    lines = [HEADER]
    hints = typing.get_type_hints(schema.Config)
    for section in dataclasses.fields(schema.Config):
        cls = hints[section.name]
        lines += [
            f"\n## `{section.name}` — {cls.__doc__.strip()}\n",
            "| key | type | default | meaning |",
            "|---|---|---|---|",
        ]
        docs, types = field_docs(cls), typing.get_type_hints(cls)
        for f in dataclasses.fields(cls):
            doc = docs.get(f.name, "").replace("|", "\\|")
            lines.append(
                f"| `{section.name}.{f.name}` | {type_name(types[f.name])} | "
                f"{_default(f)} | {doc} |"
            )
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    print(render(), end="")
