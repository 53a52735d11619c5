"""Process helpers of the local platform: held signals, spawning, process-group kills, free ports,
and the run's footprint (what it started and created), checked from /proc and the file system.

Every child the local runner starts (the server, the poolers, the launcher, each replica) leads its
own session, so one ``killpg`` reaches it and everything it started, and nothing else.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import Any

#: What ends a run the way Ctrl-C does (a closed terminal or a dropped ssh too).
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)

_held_depth = 0
_held_handlers: dict[int, Any] = {}
_held_pending: list[int] = []


def _note(signum: int, _frame: object) -> None:
    _held_pending.append(signum)


@contextmanager
def deferred_signals() -> Iterator[None]:
    """Hold SIGINT/SIGTERM/SIGHUP while a resource is created and recorded, so an interrupt never
    lands between the two (a temporary directory or a child process nobody would clean up); a signal
    that came meanwhile is acted on when the outermost block ends.

    Held in Python (the handlers note the signal), never in the kernel's signal mask: a child
    inherits the mask, and a PgBouncer started with SIGTERM blocked ignores it for its whole life.
    """
    global _held_depth
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    if _held_depth == 0:
        _held_pending.clear()
        _held_handlers.clear()
        for sig in STOP_SIGNALS:
            handler = signal.getsignal(sig)
            if handler is not None:  # None: installed outside Python, cannot be put back
                _held_handlers[sig] = handler
                signal.signal(sig, _note)
    _held_depth += 1
    try:
        yield
    finally:
        _held_depth -= 1
        if _held_depth == 0:
            for held, handler in _held_handlers.items():
                signal.signal(held, handler)
            pending, handlers = list(_held_pending), dict(_held_handlers)
            _held_pending.clear()
            for signum in dict.fromkeys(pending):
                previous = handlers.get(signum)
                if callable(previous):
                    previous(signum, None)  # the CLI's: raises KeyboardInterrupt
                elif previous == signal.SIG_DFL:
                    os.kill(os.getpid(), signum)


def _unblock_all() -> None:  # pragma: no cover - runs in the child between fork and exec
    signal.pthread_sigmask(signal.SIG_SETMASK, set())


def spawn(args: list[str], **kwargs: Any) -> subprocess.Popen[bytes]:
    """Start a long-lived child: it leads its own session (one ``killpg`` reaches it and whatever it
    starts; a terminal's Ctrl-C does not, the runner stops it) and starts with no signal blocked.

    Call it inside ``deferred_signals()`` together with recording the result. The child's mask is
    cleared only when this thread has one (poolbench itself started with signals blocked): the
    ``preexec_fn`` that does it costs the fast spawn path.
    """
    if signal.pthread_sigmask(signal.SIG_BLOCK, set()):
        kwargs["preexec_fn"] = _unblock_all
    proc = subprocess.Popen(args, start_new_session=True, **kwargs)
    for footprint in _footprints:
        footprint.groups[proc.pid] = " ".join(args)[:200]
    return proc


def temp_dir(prefix: str, base: Path | str | None = None) -> Path:
    """A new private temporary directory of the run (``tempfile.mkdtemp``), recorded in the footprint.
    Call it inside ``deferred_signals()`` together with recording the result."""
    path = Path(tempfile.mkdtemp(prefix=prefix, dir=base))
    for footprint in _footprints:
        footprint.dirs.append(path)
    return path


def adopt_group(pgid: int, what: str) -> None:
    """A process group started on the run's behalf by another process (a replica the launcher forked)."""
    for footprint in _footprints:
        footprint.groups[pgid] = what


def kill_group(pid: int, sig: int = signal.SIGKILL) -> None:
    """Signal a process group (each child here leads its own session) that may already be gone."""
    with suppress(ProcessLookupError):
        os.killpg(pid, sig)


def free_port() -> int:
    """A TCP port on loopback that nothing listens on right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


# -- the run's footprint ------------------------------------------------------------------------------

_footprints: list[Footprint] = []


class Footprint:
    """Every process group a run started and every temporary directory it created, recorded as they
    come, so that afterwards the kernel and the file system can say what is still there: a process
    in one of the groups, or one whose working directory, command line or environment points into
    one of the directories (a server backend, a PgBouncer, a replica's worker), and a directory
    that still exists. Zombies (exited, not yet reaped) hold nothing and do not count."""

    def __init__(self) -> None:
        self.groups: dict[int, str] = {}
        self.dirs: list[Path] = []

    @contextmanager
    def recording(self) -> Iterator[Footprint]:
        _footprints.append(self)
        try:
            yield self
        finally:
            _footprints.remove(self)

    def leftovers(self, wait: float = 0.0) -> list[str]:
        """What is still there, each as "process PID (command)" or "directory PATH"; when ``wait`` is
        given, looked at again until nothing is left or that many seconds have passed (a killed
        process needs a moment to leave the process table)."""
        deadline = time.monotonic() + wait
        while True:
            found = self._processes() + [f"directory {d}" for d in self.dirs if os.path.lexists(d)]
            if not found or time.monotonic() >= deadline:
                return found
            time.sleep(0.05)

    def _processes(self) -> list[str]:
        roots = tuple(str(d) for d in self.dirs)
        found = []
        for pid, group, command in _live_processes():
            if pid == os.getpid():
                continue
            if group in self.groups or (roots and _points_into(pid, command, roots)):
                found.append(f"process {pid} ({' '.join(command.split())[:120] or self.groups.get(group, '?')})")
        return found


def _live_processes() -> Iterator[tuple[int, int, str]]:
    """(pid, process group, command line) of every process in /proc that is not a zombie."""
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            with open(f"/proc/{entry.name}/stat", "rb") as fh:
                stat = fh.read().decode(errors="replace")
            fields = stat[stat.rindex(")") + 2 :].split()  # after "pid (comm) ": state ppid pgrp …
            if fields[0] in ("Z", "X"):
                continue
            with open(f"/proc/{entry.name}/cmdline", "rb") as fh:
                command = fh.read().replace(b"\0", b" ").decode(errors="replace")
        except (OSError, ValueError, IndexError):
            continue
        yield int(entry.name), int(fields[2]), command


def _points_into(pid: int, command: str, roots: tuple[str, ...]) -> bool:
    """The process works in, was started on, or carries in its environment a path under ``roots``."""
    if any(root in command for root in roots):
        return True
    with suppress(OSError):
        cwd = os.readlink(f"/proc/{pid}/cwd")
        if any(cwd == root or cwd.startswith(root + "/") for root in roots):
            return True
    with suppress(OSError):
        with open(f"/proc/{pid}/environ", "rb") as fh:
            environ = fh.read().decode(errors="replace")
        if any(root in environ for root in roots):
            return True
    return False
