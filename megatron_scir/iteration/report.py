"""Reporting for the self-rewarding iteration driver: metric records to tables and plots.

A *metric record* is a flat mapping written once per (method, seed, iteration), e.g.::

    {"method": "scir", "seed": 0, "iteration": 1, "oracle_accuracy": 0.42,
     "judge_accuracy": 0.61, "implicit_accuracy": 0.55, "pairs_used": 120, "wall_s/train": 12.3}

``iteration`` 0 is the model after seed SFT (the M_1 baseline). A value is ``None`` or NaN where
it was not measured (the implicit accuracy at iteration 0, say); every function here treats both
as missing.

- :func:`format_table`: a fixed-width text table for the terminal.
- :func:`aggregate`: mean / sample std / min / max per group (across seeds, by default).
- :func:`markdown_table`: a GitHub Markdown table, optionally ``mean ± std`` cells.
- :func:`plot_iterations`: one subplot per metric against the iteration, written as a PNG.

Records go to and come from JSONL files through :mod:`megatron_scir.training.metrics_log`
(:func:`~megatron_scir.training.metrics_log.write_jsonl`, ``read_jsonl``).

Pure Python; matplotlib is imported inside :func:`plot_iterations` only, so importing this module
stays cheap (no matplotlib, no torch).
"""

from __future__ import annotations

import math
import numbers
import os
import tempfile
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

__all__ = [
    "aggregate",
    "format_table",
    "markdown_table",
    "plot_iterations",
]

Column = str | tuple[str, str]
"""A column: a record key, or ``(key, header)``."""

_MISSING_TEXT = "-"
_MISSING_MARKDOWN = "–"  # an en dash


# --------------------------------------------------------------------------------------------
# values


def _is_number(value: Any) -> bool:
    """Whether ``value`` is a real number (bools are not numbers here)."""
    return isinstance(value, numbers.Real) and not isinstance(value, bool)


def _is_missing(value: Any) -> bool:
    """``None``, or a NaN float."""
    if value is None:
        return True
    return _is_number(value) and not isinstance(value, numbers.Integral) and math.isnan(value)


def _is_unit(value: float) -> bool:
    """Whether a float is "[0, 1]-ish" (an accuracy, a rate, a log-odds near 0): 3 decimals."""
    magnitude = abs(value)
    return magnitude == 0.0 or 1e-3 <= magnitude <= 1.0


def _format_float(value: float, *, like: float | None = None) -> str:
    """3 decimals when ``like`` (default: ``value``) is [0, 1]-ish, else 4 significant digits."""
    value = float(value)
    if math.isinf(value):
        return "inf" if value > 0 else "-inf"
    return f"{value:.3f}" if _is_unit(value if like is None else float(like)) else f"{value:.4g}"


def _format_value(value: Any, missing: str) -> str:
    """The text of one cell: ints as ints, floats by :func:`_format_float`, the rest ``str``."""
    if _is_missing(value):
        return missing
    if isinstance(value, numbers.Integral) and not isinstance(value, bool):
        return str(int(value))
    if _is_number(value):
        return _format_float(value)
    return str(value)


def _as_float(value: Any) -> float | None:
    """A metric value as a float, or ``None`` when missing (``None``/NaN).

    Raises:
        TypeError: ``value`` is neither missing nor a real number (bools count as 0/1).
    """
    if _is_missing(value):
        return None
    if isinstance(value, bool) or _is_number(value):
        return float(value)
    raise TypeError(f"not a number: {value!r}")


def _columns(columns: Sequence[Column]) -> list[tuple[str, str]]:
    """Normalise columns to ``(key, header)`` pairs."""
    out = []
    for column in columns:
        if isinstance(column, str):
            out.append((column, column))
        else:
            key, header = column
            out.append((key, header))
    return out


def _numeric_column(rows: Sequence[Mapping[str, Any]], key: str) -> bool:
    """Whether every present value of ``key`` is a number (a column of numbers is right-aligned)."""
    return all(_is_number(row.get(key)) for row in rows if not _is_missing(row.get(key)))


# --------------------------------------------------------------------------------------------
# tables


def format_table(
    records: Sequence[Mapping[str, Any]],
    columns: Sequence[Column],
    *,
    title: str | None = None,
) -> str:
    """A fixed-width text table for the terminal, one row per record.

    Floats in [0, 1] (by magnitude, 0 included, below 1e-3 excluded) print with 3 decimals, other
    floats with 4 significant digits, ints as ints; ``None``, NaN and an absent key print as
    ``-``. Numbers are right-aligned, text left-aligned; a header follows its column (right when
    every present value is a number).

    Args:
        records: the rows.
        columns: a record key, or ``(key, header)``, per column.
        title: an optional line above the table.

    Returns:
        The table, lines joined by ``\\n``, no trailing newline: the title (if any), the header, a
        rule of dashes, the rows.

    Example::

        method  iteration  oracle_accuracy
        ------  ---------  ---------------
        scir            0            0.420
        srlm            1                -
    """
    cols = _columns(columns)
    if not cols:
        raise ValueError("format_table needs at least one column")
    numeric = [_numeric_column(records, key) for key, _ in cols]
    cells = [
        [_format_value(record.get(key), _MISSING_TEXT) for key, _ in cols] for record in records
    ]
    widths = [
        max([len(header), *(len(row[i]) for row in cells)]) for i, (_, header) in enumerate(cols)
    ]

    def line(texts: Sequence[str], right: Sequence[bool]) -> str:
        parts = [
            text.rjust(width) if r else text.ljust(width)
            for text, width, r in zip(texts, widths, right, strict=True)
        ]
        return "  ".join(parts).rstrip()

    lines = [] if title is None else [title]
    lines.append(line([header for _, header in cols], numeric))
    lines.append("  ".join("-" * width for width in widths))
    for record, row in zip(records, cells, strict=True):
        right = [
            num or _is_number(record.get(key)) for (key, _), num in zip(cols, numeric, strict=True)
        ]
        lines.append(line(row, right))
    return "\n".join(lines)


def aggregate(
    records: Iterable[Mapping[str, Any]],
    *,
    by: Sequence[str] | str = ("method", "iteration"),
    metrics: Sequence[str],
) -> list[dict[str, Any]]:
    """Group records (across seeds, by default) and summarise each metric per group.

    Args:
        records: the metric records.
        by: the keys that name a group (an absent key groups as ``None``).
        metrics: the keys to summarise. ``None``/NaN values (and absent keys) are ignored.

    Returns:
        One dict per group, in first-seen order: ``{**group_keys, "n": records in the group,
        m: mean, f"{m}_std": sample std (0.0 from a single value), f"{m}_min", f"{m}_max"}`` per
        metric ``m``; all four are ``None`` when the group has no value of ``m``.

    Raises:
        TypeError: a metric value is neither missing nor a number.
    """
    keys = (by,) if isinstance(by, str) else tuple(by)
    groups: dict[tuple[Any, ...], list[Mapping[str, Any]]] = {}
    for record in records:
        groups.setdefault(tuple(record.get(key) for key in keys), []).append(record)

    out = []
    for group_key, members in groups.items():
        row: dict[str, Any] = dict(zip(keys, group_key, strict=True))
        row["n"] = len(members)
        for metric in metrics:
            values = []
            for record in members:
                try:
                    value = _as_float(record.get(metric))
                except TypeError as err:
                    raise TypeError(f"metric {metric!r} of group {row}: {err}") from None
                if value is not None:
                    values.append(value)
            row.update(_summary(metric, values))
        out.append(row)
    return out


def _summary(metric: str, values: Sequence[float]) -> dict[str, float | None]:
    """Mean, sample std (0.0 for one value), min and max of ``values``; all ``None`` if empty."""
    if not values:
        return {metric: None, f"{metric}_std": None, f"{metric}_min": None, f"{metric}_max": None}
    n = len(values)
    mean = math.fsum(values) / n
    std = math.sqrt(math.fsum((v - mean) ** 2 for v in values) / (n - 1)) if n > 1 else 0.0
    return {
        metric: mean,
        f"{metric}_std": std,
        f"{metric}_min": min(values),
        f"{metric}_max": max(values),
    }


def markdown_table(
    rows: Sequence[Mapping[str, Any]],
    columns: Sequence[Column],
    *,
    spread: bool = False,
) -> str:
    """A GitHub Markdown table, one row per mapping.

    Values print as in :func:`format_table`, except that ``None``, NaN and an absent key print as
    ``–`` (an en dash). Number columns are right-aligned (``---:``). ``|`` in text is escaped.

    Args:
        rows: the rows, typically from :func:`aggregate`.
        columns: a row key, or ``(key, header)``, per column.
        spread: print a number cell as ``mean ± std`` (e.g. ``0.512 ± 0.031``) where the row has
            ``f"{key}_std"``; the std takes the mean's format.

    Returns:
        The table, lines joined by ``\\n``, no trailing newline.
    """
    cols = _columns(columns)
    if not cols:
        raise ValueError("markdown_table needs at least one column")

    def cell(row: Mapping[str, Any], key: str) -> str:
        value = row.get(key)
        std = row.get(f"{key}_std")
        if spread and _is_number(value) and _is_number(std):
            if not _is_missing(value) and not _is_missing(std):
                return f"{_format_float(value)} ± {_format_float(std, like=value)}"
        text = _format_value(value, _MISSING_MARKDOWN)
        return text.replace("|", "\\|").replace("\n", " ")

    def line(texts: Iterable[str]) -> str:
        return "| " + " | ".join(texts) + " |"

    numeric = [_numeric_column(rows, key) for key, _ in cols]
    lines = [
        line(header.replace("|", "\\|") for _, header in cols),
        "|" + "|".join("---:" if num else ":---" for num in numeric) + "|",
    ]
    lines.extend(line(cell(row, key) for key, _ in cols) for row in rows)
    return "\n".join(lines)


# --------------------------------------------------------------------------------------------
# plot

_MARKERS = ("o", "s", "^", "D", "v", "P", "X", "*")


def plot_iterations(
    records: Iterable[Mapping[str, Any]],
    path: str | os.PathLike[str],
    *,
    metrics: Sequence[Column],
    group: str = "method",
    title: str | None = None,
) -> Path:
    """Plot metrics against the iteration, one subplot per metric, one line per ``group`` value.

    The subplots fill a grid of at most 3 per row; x is the iteration (integer ticks). Where
    several records share ``(group value, iteration)`` (several seeds), the line goes through
    their mean and a shaded band spans their min–max. ``None``/NaN values (and records without an
    iteration) are skipped. A group keeps its colour and marker in every subplot; one legend for
    the figure.

    Rendered with :class:`matplotlib.figure.Figure` and the Agg canvas, never pyplot: no window,
    no global figure state, safe in threads and subprocesses. Written atomically: to a temporary
    file in the same directory, then ``os.replace``.

    Args:
        records: the metric records.
        path: the PNG to write (its directory is created if needed).
        metrics: a record key, or ``(key, label)``, per subplot.
        group: the record key whose values get one line each.
        title: an optional figure title.

    Returns:
        ``path`` as a :class:`~pathlib.Path`.

    Raises:
        ValueError: no metrics.
        TypeError: a metric value is neither missing nor a number.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.ticker import MaxNLocator

    cols = _columns(metrics)
    if not cols:
        raise ValueError("plot_iterations needs at least one metric")
    records = [r for r in records if not _is_missing(r.get("iteration"))]
    groups = list(dict.fromkeys(record.get(group) for record in records))

    ncols = min(3, len(cols))
    nrows = math.ceil(len(cols) / ncols)
    fig = Figure(figsize=(4.2 * ncols, 3.2 * nrows + (0.6 if len(groups) > 1 else 0.3)))
    FigureCanvasAgg(fig)
    fig.set_layout_engine("constrained")
    handles: dict[str, Any] = {}
    for index, (key, label) in enumerate(cols):
        ax = fig.add_subplot(nrows, ncols, index + 1)
        for g_index, value in enumerate(groups):
            points: dict[float, list[float]] = {}
            for record in records:
                if record.get(group) != value:
                    continue
                try:
                    y = _as_float(record.get(key))
                except TypeError as err:
                    raise TypeError(f"metric {key!r}: {err}") from None
                if y is not None:
                    points.setdefault(float(record["iteration"]), []).append(y)
            if not points:
                continue
            xs = sorted(points)
            color, marker = f"C{g_index % 10}", _MARKERS[g_index % len(_MARKERS)]
            means = [math.fsum(points[x]) / len(points[x]) for x in xs]
            (handle,) = ax.plot(xs, means, color=color, marker=marker, label=str(value))
            handles.setdefault(str(value), handle)
            if any(len(points[x]) > 1 for x in xs):
                lows = [min(points[x]) for x in xs]
                highs = [max(points[x]) for x in xs]
                ax.fill_between(xs, lows, highs, color=color, alpha=0.2, linewidth=0)
        ax.set_title(label)
        ax.set_xlabel("iteration")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(True, alpha=0.3)
    if handles:
        fig.legend(
            list(handles.values()),
            list(handles),
            loc="outside lower center",
            ncols=min(len(handles), 6),
            title=group,
            frameon=False,
        )
    if title is not None:
        fig.suptitle(title)

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            fig.savefig(fh, format="png", dpi=100)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path
