"""The Slurm test harness's own query retry (no cluster needed): real processes, real signals."""

from __future__ import annotations

import pytest

from .cluster import LocalCluster

# Dies of SIGPIPE (as scontrol did on the CI machine) until it has run $1 times, then answers.
FLAKY = 'n=$(cat "$2" 2>/dev/null || echo 0); echo $((n + 1)) > "$2"; ' \
        '[ "$n" -ge "$1" ] && { echo JobState=RUNNING; exit 0; }; kill -PIPE $$'


def _calls(path) -> int:
    return int(path.read_text())


def test_a_query_killed_by_sigpipe_is_asked_again(tmp_path):
    cluster = LocalCluster(tmp_path)
    counter = tmp_path / "calls"
    out = cluster.run("sh", "-c", FLAKY, "flaky", "2", str(counter), attempts=5)
    assert out.strip() == "JobState=RUNNING"
    assert _calls(counter) == 3


def test_the_retry_gives_up_after_its_attempts_and_names_every_failure(tmp_path):
    cluster = LocalCluster(tmp_path)
    counter = tmp_path / "calls"
    with pytest.raises(RuntimeError, match=r"failed: \(-13\) ; \(-13\) $"):
        cluster.run("sh", "-c", FLAKY, "flaky", "9", str(counter), attempts=2)
    assert _calls(counter) == 2


def test_a_wrong_query_and_a_state_change_are_never_repeated(tmp_path):
    cluster = LocalCluster(tmp_path)
    counter = tmp_path / "calls"
    script = 'echo x >> "$1"; echo "Invalid job id specified" >&2; exit 1'
    with pytest.raises(RuntimeError, match="Invalid job id specified"):
        cluster.run("sh", "-c", script, "wrong", str(counter), attempts=5)
    assert counter.read_text().count("x") == 1
    with pytest.raises(RuntimeError, match=r"\(-13\)"):
        cluster.run("sh", "-c", FLAKY, "flaky", "9", str(tmp_path / "once"))
    assert _calls(tmp_path / "once") == 1
