"""Append-with-commit streams: readers see whole committed chunks only, even after SIGKILL."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import textwrap
import time
from collections import defaultdict

import pytest

from megatron_scir.data import ChunkedJsonlWriter, DataError, RecordError, read_records
from megatron_scir.data.stream import STREAM_HEADER


def generation(name: str, text: str = "a response") -> dict:
    return {
        "prompt_id": name,
        "prompt": "a prompt",
        "responses": [text, ""],
        "truncated": [False, True],
    }


def test_committed_chunks_read_back_in_order_with_their_meta(tmp_path):
    path = tmp_path / "gen.jsonl"
    with ChunkedJsonlWriter(path) as writer:
        writer.commit([generation("a"), generation("b")], meta={"next_prompt": 2})
        writer.commit([], meta={"next_prompt": 3})  # a chunk may record progress only
        writer.commit([generation("c")], meta={"next_prompt": 4})
    records, report = read_records(path, "generations")
    assert [r.prompt_id for r in records] == ["a", "b", "c"]
    assert [r.where for r in records] == [f"{path}:2", f"{path}:3", f"{path}:6"]
    assert report.num_uncommitted_lines == 0
    resumed = ChunkedJsonlWriter(path)
    assert (resumed.num_chunks, resumed.num_records) == (3, 3)
    assert [m["next_prompt"] for m in resumed.chunk_metas] == [2, 3, 4]
    resumed.close()


def test_an_interrupted_chunk_is_invisible_and_cut_off_when_the_writer_resumes(tmp_path):
    path = tmp_path / "gen.jsonl"
    with ChunkedJsonlWriter(path) as writer:
        writer.commit([generation("a")])
    whole = path.read_bytes()
    with open(path, "ab") as fh:  # what a kill in the middle of the next commit leaves
        fh.write(b'{"prompt_id": "b", "prompt": "x", "responses": ["y"], "truncated": [false]}\n')
        fh.write(b'{"__commit__": {"chunk": 1, "rec')
    records, report = read_records(path, "generations")
    assert [r.prompt_id for r in records] == ["a"]
    assert report.num_uncommitted_lines == 2
    with ChunkedJsonlWriter(path) as writer:
        assert path.read_bytes() == whole
        writer.commit([generation("b2")])
    assert [r.prompt_id for r in read_records(path, "generations")[0]] == ["a", "b2"]


def test_a_damaged_committed_chunk_is_an_error_or_skipped_and_counted(tmp_path):
    path = tmp_path / "gen.jsonl"
    with ChunkedJsonlWriter(path) as writer:
        writer.commit([generation("a"), generation("b")])
        writer.commit([generation("c")])
    path.write_bytes(path.read_bytes().replace(b'"a response"', b'"A response"', 1))
    with pytest.raises(RecordError, match=r"gen.jsonl:4: corrupt chunk: chunk 0 does not match"):
        read_records(path, "generations")
    records, report = read_records(path, "generations", on_bad_record="skip")
    assert [r.prompt_id for r in records] == ["c"]
    assert report.problems == {"corrupt chunk": 2}
    with pytest.raises(RecordError, match="refusing to append to a damaged stream"):
        ChunkedJsonlWriter(path)


def test_a_second_writer_on_the_same_stream_is_refused(tmp_path):
    path = tmp_path / "gen.jsonl"
    with ChunkedJsonlWriter(path):
        with pytest.raises(DataError, match="another process is writing"):
            ChunkedJsonlWriter(path)


def test_a_stream_cut_at_any_byte_reads_back_as_the_chunks_committed_before_the_cut(tmp_path):
    # Appends are sequential, so a kill at any moment leaves a byte prefix of the full file.
    full_path, path = tmp_path / "full.jsonl", tmp_path / "cut.jsonl"
    ends = []
    with ChunkedJsonlWriter(full_path, fsync=False) as writer:
        for chunk, size in enumerate((2, 1, 3)):
            writer.commit([generation(f"{chunk}:{i}", "é" * i) for i in range(size)])
            ends.append((full_path.stat().st_size, writer.num_records))
    data = full_path.read_bytes()
    for cut in range(len(data) + 1):
        path.write_bytes(data[:cut])
        if cut < len(STREAM_HEADER):
            continue  # the header is created atomically: a shorter file never exists
        expected = max([n for end, n in ends if end <= cut], default=0)
        assert len(read_records(path, "generations")[0]) == expected, f"cut at byte {cut}"
        with ChunkedJsonlWriter(path, fsync=False) as writer:
            assert writer.num_records == expected
        assert path.stat().st_size == max(
            [e for e, _ in ends if e <= cut], default=len(STREAM_HEADER)
        )


WRITER = textwrap.dedent(
    """
    import random, sys
    from megatron_scir.data.stream import ChunkedJsonlWriter
    path, seed = sys.argv[1], int(sys.argv[2])
    rng = random.Random(seed)
    writer = ChunkedJsonlWriter(path, fsync=False)
    chunk = writer.num_chunks
    print("ready", flush=True)
    while True:
        n = rng.randint(1, 40)
        rows = [{"prompt_id": f"{chunk}:{i}:{n}", "prompt": "p",
                 "responses": ["x" * rng.randint(1, 4000)], "truncated": [False]}
                for i in range(n)]
        writer.commit(rows, meta={"chunk": chunk})
        chunk += 1
    """
)


def test_sigkill_at_any_moment_leaves_only_whole_committed_chunks(tmp_path):
    path, script = tmp_path / "gen.jsonl", tmp_path / "writer.py"
    script.write_text(WRITER)
    rng = random.Random(0)
    env = {**os.environ, "PYTHONPATH": os.getcwd()}
    for round_ in range(3):
        proc = subprocess.Popen(
            [sys.executable, str(script), str(path), str(round_)],
            stdout=subprocess.PIPE,
            env=env,
            text=True,
        )
        assert proc.stdout.readline().strip() == "ready"
        time.sleep(rng.uniform(0.05, 0.3))
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        records, _ = read_records(path, "generations")
        chunks: dict[int, list[int]] = defaultdict(list)
        sizes = {}
        for record in records:
            chunk, i, n = map(int, record.prompt_id.split(":"))
            chunks[chunk].append(i)
            sizes[chunk] = n
        assert sorted(chunks) == list(range(len(chunks))) and len(chunks) > 0
        for chunk, items in chunks.items():
            assert items == list(range(sizes[chunk])), f"chunk {chunk} is partial"
