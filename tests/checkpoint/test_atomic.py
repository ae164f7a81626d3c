"""``<dir>.incomplete`` until complete: the one helper behind checkpoints and HF exports."""

from __future__ import annotations

import os
from pathlib import Path
from unittest import mock

from megatron_scir.checkpoint import atomic
from megatron_scir.checkpoint.atomic import commit, fresh_staging, staging_path


def _files(directory: Path) -> dict[str, str]:
    return {p.name: p.read_text() for p in sorted(directory.iterdir())}


def test_directory_is_never_visible_under_its_final_name_before_commit(tmp_path):
    final = tmp_path / "runs" / "iter_1"
    staging = fresh_staging(final)
    assert staging == staging_path(final) == tmp_path / "runs" / "iter_1.incomplete"
    assert staging.is_dir() and not any(staging.iterdir())
    for name in ("a.distcp", "metadata.json"):
        (staging / name).write_text(name)
        assert not final.exists()
    assert commit(staging, final) == final
    assert _files(final) == {"a.distcp": "a.distcp", "metadata.json": "metadata.json"}
    assert not staging.exists()


def test_overwrite_keeps_the_old_directory_complete_until_the_new_one_has_its_name(tmp_path):
    final = tmp_path / "iter_1"
    final.mkdir()
    (final / "weights").write_text("old")
    staging = fresh_staging(final)
    (staging / "weights").write_text("new")
    assert _files(final) == {"weights": "old"}  # untouched while the new one is written
    seen, real_rename = [], os.rename

    def rename(src, dst):
        # at the moment the new directory takes its name, the old one is still whole
        if Path(src) == staging:
            seen.append(_files(tmp_path / "iter_1.replaced"))
        real_rename(src, dst)

    with mock.patch.object(atomic.os, "rename", rename):
        commit(staging, final)
    assert seen == [{"weights": "old"}]
    assert _files(final) == {"weights": "new"}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["iter_1"]


def test_a_dead_writers_incomplete_directory_is_replaced_by_the_next_writer(tmp_path):
    final = tmp_path / "export"
    stale = staging_path(final)
    stale.mkdir()
    (stale / "half.safetensors").write_bytes(b"x")
    staging = fresh_staging(final)
    assert staging == stale and not any(staging.iterdir()) and not final.exists()


def test_a_dead_commits_replaced_directory_does_not_block_the_next_commit(tmp_path):
    final = tmp_path / "iter_1"
    for name in ("iter_1", "iter_1.replaced"):
        (tmp_path / name).mkdir()
        (tmp_path / name / "weights").write_text(name)
    staging = fresh_staging(final)
    (staging / "weights").write_text("new")
    commit(staging, final)
    assert _files(final) == {"weights": "new"}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["iter_1"]
