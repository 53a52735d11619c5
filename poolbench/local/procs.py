"""Process helpers of the local platform: held signals, process-group kills, free ports.

Every child the local runner starts (the server, the launcher, each replica) leads its own session,
so one ``killpg`` reaches it and everything it started, and nothing else.
"""

from __future__ import annotations

import os
import signal
import socket
import threading
from collections.abc import Iterator
from contextlib import contextmanager, suppress


@contextmanager
def deferred_signals() -> Iterator[None]:
    """Hold SIGINT/SIGTERM while a resource is created and recorded, so an interrupt never lands
    between the two (a temporary directory or a child process nobody would clean up)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    blocked = {signal.SIGINT, signal.SIGTERM}
    previous = signal.pthread_sigmask(signal.SIG_BLOCK, blocked)
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, previous)


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
