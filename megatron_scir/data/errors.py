"""Exceptions for user-facing data problems: each message names the file and line, or the setting.

The CLI prints these messages without a traceback; they are worded as what to change.
"""

from __future__ import annotations

from megatron_scir.config.errors import UserError


class DataError(UserError):
    """A problem with user data, a tokenizer file or a data setting, worded as what to change."""


class RecordError(DataError):
    """A bad JSONL line (or row). The message starts with ``path:line:`` (``path:row N:``).

    Attributes:
        path: The file holding the bad line.
        line: 1-based line number in that file.
        problem: The problem kind (for example ``"missing field"``), used to summarise skips.
        detail: What exactly is wrong with the line.
    """

    def __init__(
        self, path: str, line: int, problem: str, detail: str, hint: str = "", unit: str = "line"
    ) -> None:
        self.path, self.line, self.problem, self.detail = path, line, problem, detail
        place = f"{path}:{line}" if unit == "line" else f"{path}:{unit} {line}"
        message = f"{place}: {problem}: {detail}"
        super().__init__(f"{message} ({hint})" if hint else message)


class SingleTokenError(DataError):
    """A verdict or score text does not add exactly one token after the rendered judge prompt."""
