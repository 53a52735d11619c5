"""The embedded server's log file, followed (an edge: the file system): a ``serverlog.LogSource``.

The server writes its log to one file (its stdout and stderr, ``LocalPostgres.log_path``); a restart
appends to it. Each read takes what was appended since the last one: complete lines only (a line
the server is still writing waits for its end), at most ``MAX_READ`` bytes at a time so one look
never stalls the step loop. A file that shrank was truncated: reading starts again at its start. A
file replaced by another (a different inode) is read to its end, then the new one from its start.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import BinaryIO

#: Bytes read at most per call (the rest waits for the next look: the loop looks every 50 ms).
MAX_READ = 8 << 20


class LogFile:
    """Follows ``path`` from its start (the server's first lines include the monitor's session)."""

    def __init__(self, path: Path):
        self.path = path
        self.handle: BinaryIO | None = None
        self.identity: tuple[int, int] | None = None  # (device, inode) of the file being read
        self.offset = 0
        self.partial = b""  # the start of a line not yet complete
        self.problem: str | None = None

    def read_lines(self) -> list[str]:
        try:
            stat = os.stat(self.path)
        except FileNotFoundError:
            self.problem = f"the server's log {self.path} is gone"
            return []
        except OSError as err:
            self.problem = f"the server's log {self.path} cannot be read: {err.strerror or err}"
            return []
        data = b""
        if self.handle is not None and self.identity != (stat.st_dev, stat.st_ino):
            data = self.partial + self._drain()  # replaced: what the old file still held, then the new one
            self.partial = b""
            if data and not data.endswith(b"\n"):
                data += b"\n"  # the old file's unfinished last line ends there
            self._close_handle()
        if self.handle is None:
            try:
                self.handle = open(self.path, "rb")  # noqa: SIM115 - kept open between reads, closed in close()
            except OSError as err:
                self.problem = f"the server's log {self.path} cannot be opened: {err.strerror or err}"
                return []
            opened = os.fstat(self.handle.fileno())
            self.identity = (opened.st_dev, opened.st_ino)
            self.offset = 0
        elif stat.st_size < self.offset:  # truncated: whatever was unfinished is gone too
            self.handle.seek(0)
            self.offset = 0
            self.partial = b""
        self.problem = None
        return self._lines(data + self._drain())

    def _drain(self) -> bytes:
        assert self.handle is not None
        try:
            data = self.handle.read(MAX_READ)
        except OSError as err:
            self.problem = f"reading the server's log failed: {err.strerror or err}"
            return b""
        self.offset += len(data)
        return data

    def _lines(self, data: bytes) -> list[str]:
        if not data:
            return []
        data = self.partial + data
        end = data.rfind(b"\n")
        if end < 0:
            self.partial = data
            return []
        self.partial = data[end + 1 :]
        return data[:end].decode("utf-8", errors="replace").split("\n")

    def unavailable(self) -> str | None:
        return self.problem

    def _close_handle(self) -> None:
        handle, self.handle = self.handle, None
        if handle is not None:
            handle.close()

    def close(self) -> None:
        self._close_handle()
