"""Following the embedded server's log file: complete lines only, a truncated or replaced file read
again from its start, a missing file said."""

from __future__ import annotations

import os
from pathlib import Path

from poolbench.local.logtail import LogFile


def test_complete_lines_only_and_the_rest_when_it_ends(tmp_path: Path) -> None:
    path = tmp_path / "postgres.log"
    path.write_bytes(b"one\ntw")
    log = LogFile(path)
    assert log.read_lines() == ["one"]
    assert log.read_lines() == []
    with open(path, "ab") as fh:
        fh.write(b"o\nthree \xff\n")
    assert log.read_lines() == ["two", "three \ufffd"]  # bytes that are no UTF-8 do not stop the reading
    assert log.unavailable() is None
    log.close()


def test_truncated_file_is_read_from_its_start(tmp_path: Path) -> None:
    path = tmp_path / "postgres.log"
    path.write_bytes(b"first line\nsecond line\npart")
    log = LogFile(path)
    assert log.read_lines() == ["first line", "second line"]
    path.write_bytes(b"new\n")
    assert log.read_lines() == ["new"]  # the unfinished "part" went with the old content
    log.close()


def test_replaced_file_old_rest_then_new(tmp_path: Path) -> None:
    path = tmp_path / "postgres.log"
    path.write_bytes(b"a\n")
    log = LogFile(path)
    assert log.read_lines() == ["a"]
    with open(path, "ab") as fh:
        fh.write(b"b\nunfinished")
    os.rename(path, tmp_path / "old.log")
    path.write_bytes(b"c\n")
    assert log.read_lines() == ["b", "unfinished", "c"]
    log.close()


def test_missing_file_is_said_and_its_return_read(tmp_path: Path) -> None:
    path = tmp_path / "postgres.log"
    log = LogFile(path)
    assert log.read_lines() == []
    assert "is gone" in (log.unavailable() or "")
    path.write_bytes(b"back\n")
    assert log.read_lines() == ["back"]
    assert log.unavailable() is None
    log.close()
