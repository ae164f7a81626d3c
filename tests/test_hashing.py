"""Content fingerprints (``megatron_scir/hashing.py``): streamed SHA-256, cached by ``stat``.

A file is read once while untouched (also by a new process, through the cache file); an edit
in place is read again even when its size and mtime are put back (``ctime`` moves), and a copy
is read (another inode). A folder's fingerprint covers names, sizes and contents.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil

import pytest

from megatron_scir import hashing


@pytest.fixture
def reads(tmp_path, monkeypatch):
    """The files actually read (the real hasher, counted), a cache file of the test's own."""
    monkeypatch.setenv(hashing.CACHE_ENV, str(tmp_path / "cache.json"))
    hashing._memory.clear()
    seen = []
    real = hashing._stream_sha256
    monkeypatch.setattr(hashing, "_stream_sha256", lambda p: seen.append(p.name) or real(p))
    yield seen
    hashing._memory.clear()


def test_a_file_is_read_once_while_untouched_also_by_a_new_process(tmp_path, reads):
    data = tmp_path / "data.jsonl"
    data.write_bytes(b"x" * 3_000_000)  # more than one block
    want = hashlib.sha256(data.read_bytes()).hexdigest()
    assert hashing.file_sha256(data) == want and hashing.file_sha256(data) == want
    hashing._memory.clear()  # a new process: the cache file only
    assert hashing.file_sha256(data) == want
    assert reads == ["data.jsonl"]
    entries = json.loads((tmp_path / "cache.json").read_text())["entries"]
    assert [e[3] for e in entries.values()] == [want]


def test_an_edit_in_place_is_seen_even_with_size_and_mtime_put_back(tmp_path, reads):
    data = tmp_path / "prompts.jsonl"
    data.write_bytes(b'{"id": 1, "prompt": "2 + 2"}\n')
    before = hashing.content_fingerprint(data)
    st = data.stat()
    with open(data, "r+b") as fh:  # same size, one byte changed
        fh.seek(21)
        fh.write(b"3")
    os.utime(data, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert data.stat().st_mtime_ns == st.st_mtime_ns and data.stat().st_size == st.st_size
    after = hashing.content_fingerprint(data)
    assert after != before and after == "sha256:" + hashlib.sha256(data.read_bytes()).hexdigest()
    assert reads == ["prompts.jsonl", "prompts.jsonl"]


def test_a_copy_is_read_again_and_renaming_a_folder_keeps_its_entries(tmp_path, reads):
    folder = tmp_path / "ckpt.incomplete"
    folder.mkdir()
    (folder / "a.bin").write_bytes(b"a" * 10)
    (folder / "sub").mkdir()
    (folder / "sub" / "b.bin").write_bytes(b"b" * 20)
    first = hashing.content_fingerprint(folder)
    assert first.startswith("tree-sha256:") and len(reads) == 2
    folder.rename(tmp_path / "ckpt")  # a checkpoint's commit
    assert hashing.content_fingerprint(tmp_path / "ckpt") == first and len(reads) == 2
    shutil.copytree(tmp_path / "ckpt", tmp_path / "copy")
    assert hashing.content_fingerprint(tmp_path / "copy") == first and len(reads) == 4
    (tmp_path / "copy" / "sub" / "b.bin").rename(tmp_path / "copy" / "b.bin")  # another name
    assert hashing.content_fingerprint(tmp_path / "copy") != first


def test_an_unwritable_or_disabled_cache_only_costs_a_reread(tmp_path, reads, monkeypatch):
    data = tmp_path / "f"
    data.write_bytes(b"f")
    blocker = tmp_path / "not_a_dir"
    blocker.write_text("")
    monkeypatch.setenv(hashing.CACHE_ENV, str(blocker / "cache.json"))
    assert hashing.file_sha256(data) == hashlib.sha256(b"f").hexdigest()
    monkeypatch.setenv(hashing.CACHE_ENV, "off")
    assert hashing.cache_file() is None
    hashing._memory.clear()
    assert hashing.file_sha256(data) == hashlib.sha256(b"f").hexdigest()
    assert reads == ["f", "f"]


def test_missing_and_unreadable_inputs(tmp_path):
    assert hashing.content_fingerprint(tmp_path / "nothing") == "missing"
    with pytest.raises(FileNotFoundError):
        hashing.file_sha256(tmp_path / "nothing")
