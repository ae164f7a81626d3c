"""The layering contract of pyproject.toml holds, and breaks when a lower layer imports upward."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
LINT_IMPORTS = Path(sys.executable).with_name("lint-imports")


def _lint(tree: Path) -> subprocess.CompletedProcess:
    # lint-imports reads pyproject.toml from the working directory and imports the root package
    # from sys.path: point both at ``tree``
    env = {"PYTHONPATH": str(tree), "PATH": "/usr/bin:/bin"}
    return subprocess.run(
        [str(LINT_IMPORTS), "--no-cache"], cwd=tree, env=env, capture_output=True, text=True
    )


def _copy_package(tmp_path: Path) -> Path:
    tree = tmp_path / "tree"
    shutil.copytree(ROOT / "megatron_scir", tree / "megatron_scir")
    shutil.copy(ROOT / "pyproject.toml", tree / "pyproject.toml")
    return tree


@pytest.mark.skipif(not LINT_IMPORTS.exists(), reason="import-linter is installed by .[test]")
def test_the_package_keeps_its_layers(tmp_path):
    done = _lint(_copy_package(tmp_path))
    assert done.returncode == 0, done.stdout + done.stderr


@pytest.mark.skipif(not LINT_IMPORTS.exists(), reason="import-linter is installed by .[test]")
@pytest.mark.parametrize(
    ("module", "forbidden"),
    [
        ("data/collate.py", "megatron_scir.training.forward_step"),  # a lower layer upward
        ("generation/runner.py", "megatron_scir.convert.keymap"),  # independent siblings
        ("rewards/judge.py", "megatron_scir.data.chat"),  # pure math reaching into data
    ],
)
def test_a_forbidden_import_breaks_the_contract(tmp_path, module, forbidden):
    tree = _copy_package(tmp_path)
    path = tree / "megatron_scir" / module
    path.write_text(path.read_text() + f"\nimport {forbidden}  # noqa\n")
    done = _lint(tree)
    assert done.returncode != 0
    assert "BROKEN" in done.stdout and forbidden in done.stdout
