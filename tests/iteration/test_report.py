"""The iteration reports: text and Markdown tables, aggregation, the PNG plot."""

from __future__ import annotations

import math
import statistics
import subprocess
import sys
import threading

import pytest

from megatron_scir.iteration.report import (
    aggregate,
    format_table,
    markdown_table,
    plot_iterations,
)

NAN = float("nan")
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
METRICS = ["oracle_accuracy", "judge_accuracy", "implicit_accuracy"]


def _records() -> list[dict]:
    """Two methods × two seeds × iterations 0–2; implicit accuracy unmeasured at iteration 0."""
    out = []
    for method, base in (("scir", 0.40), ("srlm", 0.38)):
        for seed in (0, 1):
            for it in (0, 1, 2):
                implicit = None if it == 0 else (NAN if seed else 0.5 + 0.03 * it)
                out.append(
                    {
                        "method": method,
                        "seed": seed,
                        "iteration": it,
                        "oracle_accuracy": base + 0.05 * it + 0.01 * seed,
                        "judge_accuracy": 0.6 + 0.02 * it - 0.01 * seed,
                        "implicit_accuracy": implicit,
                        "pairs_used": 100 + 10 * it + seed,
                        "wall_s/train": 12.345 + it,
                    }
                )
    return out


# --------------------------------------------------------------------------------------------
# format_table


def test_format_table_formats_and_aligns():
    records = [
        {"method": "scir", "iteration": 0, "acc": 0.42, "wall": 12.3456, "lr": 1e-4, "x": None},
        {"method": "srlm-long", "iteration": 12, "acc": NAN, "wall": 1234.5, "lr": 0.5, "x": 1.0},
    ]
    text = format_table(
        records,
        ["method", ("iteration", "it"), ("acc", "accuracy"), "wall", "lr", "x", "absent"],
        title="Results",
    )
    lines = text.split("\n")
    assert lines[0] == "Results"
    header, rule, row0, row1 = lines[1:]
    assert header.split() == ["method", "it", "accuracy", "wall", "lr", "x", "absent"]
    assert set(rule.replace(" ", "")) == {"-"}
    assert row0.split() == ["scir", "0", "0.420", "12.35", "0.0001", "-", "-"]
    assert row1.split() == ["srlm-long", "12", "-", "1234", "0.500", "1.000", "-"]
    # every column (except a trailing blank) ends at the same offset in each line: right-aligned
    # numbers end under the end of their header; text starts under the start of its header
    assert row0.startswith("scir ") and row1.startswith("srlm-long ")
    for token in ("it", "accuracy", "wall", "lr"):
        end = header.index(token) + len(token)
        assert row0[end - 1] != " " and row1[end - 1] != " "
        assert end == len(row0) or row0[end] == " "
    assert row0.index("0.420") + len("0.420") == header.index("accuracy") + len("accuracy")
    assert row1.index(" - ") + 2 == header.index("accuracy") + len("accuracy")
    assert len({len(rule), len(header)}) == 1  # the rule spans the header (no trailing blanks)


def test_format_table_without_title_and_rows():
    text = format_table([], ["a", ("b", "Bee")])
    assert text.split("\n") == ["a  Bee", "-  ---"]
    assert format_table([{"a": True, "b": "x"}], ["a", "b"]).split("\n")[-1] == "True  x"
    with pytest.raises(ValueError):
        format_table([{"a": 1}], [])


def test_format_table_wide_cell_widens_its_column():
    text = format_table([{"k": "a-very-long-name", "v": 3}], ["k", "v"])
    header, rule, row = text.split("\n")
    assert rule.split() == ["-" * len("a-very-long-name"), "-"]
    assert header == "k" + " " * (len("a-very-long-name") - 1) + "  v"
    assert row == "a-very-long-name  3"


# --------------------------------------------------------------------------------------------
# aggregate


def test_aggregate_matches_a_direct_computation():
    records = _records()
    rows = aggregate(records, metrics=METRICS + ["pairs_used"])
    assert [(r["method"], r["iteration"]) for r in rows] == [
        (m, it) for m in ("scir", "srlm") for it in (0, 1, 2)
    ]
    for row in rows:
        members = [
            r for r in records if (r["method"], r["iteration"]) == (row["method"], row["iteration"])
        ]
        assert row["n"] == len(members) == 2
        for metric in METRICS + ["pairs_used"]:
            values = [
                r[metric] for r in members if r[metric] is not None and not math.isnan(r[metric])
            ]
            if not values:
                assert row[metric] is None and row[f"{metric}_std"] is None
                assert row[f"{metric}_min"] is None and row[f"{metric}_max"] is None
                continue
            assert row[metric] == pytest.approx(statistics.fmean(values))
            expected_std = statistics.stdev(values) if len(values) > 1 else 0.0
            assert row[f"{metric}_std"] == pytest.approx(expected_std)
            assert row[f"{metric}_min"] == min(values)
            assert row[f"{metric}_max"] == max(values)
    # implicit accuracy: None at iteration 0, a single value (the NaN seed ignored) later
    scir_it1 = rows[1]
    assert scir_it1["implicit_accuracy"] == pytest.approx(0.53)
    assert scir_it1["implicit_accuracy_std"] == 0.0
    assert rows[0]["implicit_accuracy"] is None


def test_aggregate_keys_order_and_custom_grouping():
    records = [
        {"method": "b", "seed": 0, "acc": 1.0},
        {"method": "a", "seed": 0, "acc": 2.0},
        {"method": "b", "seed": 1, "acc": 4.0},
        {"seed": 2, "acc": 5.0},  # no method: grouped under None
    ]
    rows = aggregate(records, by="method", metrics=["acc", "missing"])
    assert [r["method"] for r in rows] == ["b", "a", None]
    assert list(rows[0]) == [
        "method", "n", "acc", "acc_std", "acc_min", "acc_max",
        "missing", "missing_std", "missing_min", "missing_max",
    ]  # fmt: skip
    assert rows[0]["acc"] == 2.5 and rows[0]["acc_std"] == pytest.approx(math.sqrt(4.5))
    assert rows[0]["missing"] is None and rows[0]["n"] == 2
    with pytest.raises(TypeError, match="acc"):
        aggregate([{"method": "a", "acc": "high"}], metrics=["acc"])


# --------------------------------------------------------------------------------------------
# markdown_table


def test_markdown_table_with_spread():
    rows = aggregate(_records(), metrics=METRICS + ["wall_s/train"])
    columns = ["method", "iteration", ("oracle_accuracy", "oracle"), "implicit_accuracy"]
    text = markdown_table(rows, [*columns, ("wall_s/train", "train s"), "n"], spread=True)
    lines = text.split("\n")
    assert lines[0] == "| method | iteration | oracle | implicit_accuracy | train s | n |"
    assert lines[1] == "|:---|---:|---:|---:|---:|---:|"
    assert len(lines) == 2 + len(rows)
    cells = [cell.strip() for cell in lines[2].strip("|").split("|")]
    std = statistics.stdev([0.40, 0.41])
    assert cells == ["scir", "0", f"0.405 ± {std:.3f}", "–", "12.35 ± 0", "2"]
    assert lines[3].split("|")[4].strip() == "0.530 ± 0.000"
    # without spread: only the mean
    plain = markdown_table(rows, columns).split("\n")[2]
    assert [c.strip() for c in plain.strip("|").split("|")] == ["scir", "0", "0.405", "–"]


def test_markdown_table_escapes_pipes_and_spread_needs_a_std():
    text = markdown_table([{"name": "a|b", "acc": 0.5, "other": 0.25, "other_std": None}],
                          ["name", "acc", "other"], spread=True)  # fmt: skip
    assert text.split("\n")[2] == "| a\\|b | 0.500 | 0.250 |"
    explicit = markdown_table([{"acc": 0.512, "acc_std": 0.0314}], ["acc"], spread=True)
    assert explicit.split("\n")[2] == "| 0.512 ± 0.031 |"


# --------------------------------------------------------------------------------------------
# plot_iterations


def _read_png(path):
    import matplotlib.image

    return matplotlib.image.imread(path)


def _assert_real_png(path):
    assert path.read_bytes()[:8] == PNG_SIGNATURE
    image = _read_png(path)
    assert image.ndim == 3 and image.shape[0] > 100 and image.shape[1] > 100
    assert image[..., :3].std() > 0.01  # not a blank canvas
    return image


def test_plot_writes_a_png_without_leftovers(tmp_path):
    records = [r for r in _records() if r["seed"] == 0]
    out = tmp_path / "plots" / "iterations.png"  # the directory is created
    returned = plot_iterations(
        records,
        out,
        metrics=[("oracle_accuracy", "oracle acc"), "judge_accuracy", "implicit_accuracy",
                 "pairs_used"],
        title="SCIR vs SRLM",
    )  # fmt: skip
    assert returned == out
    image = _assert_real_png(out)
    assert image.shape[1] > image.shape[0]  # a 2 × 3 grid is wider than tall
    assert sorted(p.name for p in out.parent.iterdir()) == ["iterations.png"]


def test_plot_with_several_seeds_and_missing_values(tmp_path):
    records = _records() + [{"method": "scir", "seed": 9, "iteration": None, "judge_accuracy": 1}]
    out = tmp_path / "seeds.png"
    plot_iterations(records, str(out), metrics=["oracle_accuracy", "implicit_accuracy"])
    single = tmp_path / "single.png"
    plot_iterations([r for r in records if r.get("seed") == 0], single, metrics=["judge_accuracy"])
    _assert_real_png(out)
    _assert_real_png(single)
    # overwriting is atomic and leaves only the final files
    plot_iterations(records, out, metrics=["judge_accuracy"], group="seed")
    _assert_real_png(out)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["seeds.png", "single.png"]


def test_plot_failure_leaves_no_temp_file(tmp_path):
    out = tmp_path / "bad.png"
    with pytest.raises(TypeError, match="acc"):
        plot_iterations([{"method": "a", "iteration": 0, "acc": "x"}], out, metrics=["acc"])
    with pytest.raises(ValueError):
        plot_iterations([], out, metrics=[])
    plot_iterations([], out, metrics=["acc"])  # no data: empty axes, still a valid PNG
    assert out.read_bytes()[:8] == PNG_SIGNATURE
    assert [p.name for p in tmp_path.iterdir()] == ["bad.png"]


def test_plot_is_thread_safe(tmp_path):
    records = _records()
    errors = []

    def work(i):
        try:
            plot_iterations(records, tmp_path / f"p{i}.png", metrics=METRICS)
        except Exception as err:  # pragma: no cover - reported below
            errors.append(err)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    sizes = {(tmp_path / f"p{i}.png").read_bytes() == (tmp_path / "p0.png").read_bytes()
             for i in range(3)}  # fmt: skip
    assert sizes == {True}


def test_importing_the_module_is_cheap():
    code = (
        "import sys, megatron_scir.iteration.report; "
        "bad = [m for m in ('matplotlib', 'torch', 'numpy') if m in sys.modules]; "
        "assert not bad, bad"
    )
    subprocess.run([sys.executable, "-c", code], check=True)
