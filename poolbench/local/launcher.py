"""The replica launcher, an edge of the local runner (os.fork, pipes, signals).

Starting ``python -m workload`` costs each replica a fresh interpreter and ~0.3 s of CPU for its
imports (SQLAlchemy, pydantic, prometheus_client): a 10-replica step spent ~2 s of a 2-core machine
just booting. The launcher is one process that imports the workload once (while PostgreSQL starts)
and forks a replica per request; each child is then exactly a ``python -m workload`` run: its own
session, environment, log file and exit code. If the launcher cannot be used, replicas fall back
to ``python -m workload``.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

from .procs import adopt_group, deferred_signals, kill_group, spawn

LAUNCHER_CODE = "from poolbench.local.launcher import launcher_main; launcher_main()"
LAUNCHER_NAME = "poolbench-workload-launcher"  # in its command line (and its children's), for ps
LAUNCHER_ENV = "POOLBENCH_LAUNCHER"  # "off": every replica is its own ``python -m workload``
LAUNCHER_READY_SECONDS = 30.0


def _launcher_send(message: dict[str, Any]) -> None:
    data = (json.dumps(message) + "\n").encode()
    while data:
        data = data[os.write(1, data) :]


def _launcher_child(env: dict[str, str], log_path: str, sync_w: int, close: list[int]) -> None:
    """In the forked child: become a replica process, run the workload, never return."""
    code = 1
    try:
        signal.set_wakeup_fd(-1)
        signal.signal(signal.SIGCHLD, signal.SIG_DFL)
        signal.pthread_sigmask(signal.SIG_SETMASK, set())  # a replica starts with no signal blocked
        for fd in close:
            os.close(fd)
        os.setsid()  # like start_new_session=True: killpg(pid) reaches the replica and only it
        devnull = os.open(os.devnull, os.O_RDONLY)
        os.dup2(devnull, 0)
        os.close(devnull)
        log = os.open(log_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        os.dup2(log, 1)
        os.dup2(log, 2)
        os.close(log)
        os.write(sync_w, b"1")  # the launcher answers with our pid only once we lead our own session
        os.close(sync_w)
        os.environ.clear()
        os.environ.update(env)
        from workload.__main__ import main

        main()
        code = 0
    except SystemExit as exc:  # what the interpreter would do with it
        if exc.code is None:
            code = 0
        elif isinstance(exc.code, int):
            code = exc.code
        else:
            print(exc.code, file=sys.stderr)
            code = 1
    except BaseException:  # noqa: BLE001 - any other exit of a child is printed and becomes exit code 1
        import traceback

        traceback.print_exc()
        code = 1
    finally:
        try:
            for t in threading.enumerate():  # interpreter exit: wait for non-daemon threads
                if t is not threading.current_thread() and not t.daemon:
                    t.join()
            import atexit

            atexit._run_exitfuncs()
            sys.stdout.flush()
            sys.stderr.flush()
        finally:
            os._exit(code)


class LauncherProcess:
    """The launcher process's replicas: forked on request, reaped when SIGCHLD wakes the loop through
    ``wake_r``, killed when the runner closes stdin."""

    def __init__(self) -> None:
        self.wake_r, self.wake_w = os.pipe()
        os.set_blocking(self.wake_w, False)
        self.children: set[int] = set()

    def reap(self) -> None:
        """Report every replica that has ended, without waiting for one that has not."""
        while self.children:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return
            if pid == 0:
                return
            self.children.discard(pid)
            _launcher_send({"exit": pid, "code": os.waitstatus_to_exitcode(status)})

    def fork_replica(self, request: dict[str, Any]) -> None:
        """Fork one replica and answer with its pid once it leads its own session."""
        sync_r, sync_w = os.pipe()
        try:
            pid = os.fork()
        except OSError as err:
            os.close(sync_r)
            os.close(sync_w)
            _launcher_send({"error": str(err)})
            return
        if pid == 0:
            _launcher_child(request["env"], request["log"], sync_w, [sync_r, self.wake_r, self.wake_w])
        os.close(sync_w)
        self.children.add(pid)
        ok = os.read(sync_r, 1) == b"1"
        os.close(sync_r)
        _launcher_send({"pid": pid} if ok else {"error": "the replica died before it started"})

    def serve(self) -> None:
        """Fork a replica per request line on stdin and report the ones that end, until stdin closes."""
        import select

        buffer = b""
        while True:
            readable, _, _ = select.select([0, self.wake_r], [], [])
            if self.wake_r in readable:
                with contextlib.suppress(BlockingIOError):
                    os.read(self.wake_r, 512)
                self.reap()
            if 0 in readable:
                data = os.read(0, 65536)
                if not data:
                    return
                buffer += data
                while b"\n" in buffer:
                    line, buffer = buffer.split(b"\n", 1)
                    if line.strip():
                        self.fork_replica(json.loads(line))
                self.reap()

    def kill_replicas(self) -> None:
        """Kill the replicas still running and reap them all."""
        for pid in list(self.children):
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(pid, signal.SIGKILL)
        signal.signal(signal.SIGCHLD, signal.SIG_DFL)
        while self.children:
            try:
                pid, _status = os.waitpid(-1, 0)
            except ChildProcessError:
                break
            self.children.discard(pid)


def launcher_main() -> None:
    """The launcher process. Protocol, JSON lines: stdin takes ``{"env": {...}, "log": path}``;
    stdout answers ``{"ready": true}`` once, then ``{"pid": P}`` (or ``{"error": why}``) per request
    in order, and ``{"exit": P, "code": C}`` when a replica ends (C as Popen.returncode). On EOF it
    kills the replicas still running, reaps them and exits."""
    import gc

    from sqlalchemy.dialects.postgresql import psycopg2 as _dialect  # noqa: F401 - loaded by create_engine

    import workload.__main__  # the point: import once, fork many
    import workload.replica  # noqa: F401

    gc.freeze()  # keep the imported objects out of the children's collections (fewer copied pages)
    launcher = LauncherProcess()
    signal.signal(signal.SIGCHLD, lambda *_: None)
    signal.set_wakeup_fd(launcher.wake_w)
    _launcher_send({"ready": True})
    launcher.serve()
    launcher.kill_replicas()


class ForkedProcess:
    """The Popen-like handle of a replica forked by the launcher (pid, poll, wait)."""

    def __init__(self, launcher: ReplicaLauncher, pid: int):
        self.launcher, self.pid = launcher, pid
        self.returncode: int | None = None

    def poll(self) -> int | None:
        if self.returncode is None:
            self.returncode = self.launcher.exit_code(self.pid)
        return self.returncode

    def wait(self, timeout: float | None = None) -> int:
        deadline = None if timeout is None else time.monotonic() + timeout
        while self.poll() is None:
            left = None if deadline is None else deadline - time.monotonic()
            if left is not None and left <= 0:
                raise subprocess.TimeoutExpired(f"replica {self.pid}", left + (timeout or 0.0))
            self.launcher.wait_exit(min(left, 0.5) if left is not None else 0.5)
        code = self.returncode
        assert code is not None  # the loop above ends only once poll() has it
        return code


class ReplicaLauncher:
    """Runner side of the launcher: ``spawn()`` returns a ForkedProcess, or None to fall back."""

    def __init__(self) -> None:
        self.proc: subprocess.Popen[bytes] | None = None
        self.ready = threading.Event()
        self.dead = False
        self.cond = threading.Condition()
        self.exits: dict[int, int] = {}
        self.replies: list[dict[str, Any] | None] = []
        self.spawn_lock = threading.Lock()
        self.reader: threading.Thread | None = None

    def start(self) -> ReplicaLauncher:
        try:
            with deferred_signals():
                self.proc = spawn(
                    [sys.executable, "-c", LAUNCHER_CODE, LAUNCHER_NAME],
                    stdin=subprocess.PIPE,
                    stdout=subprocess.PIPE,
                    stderr=subprocess.DEVNULL,
                )
        except OSError:
            self.dead = True
            self.ready.set()
            return self
        self.reader = threading.Thread(target=self._read, args=(self.proc,), daemon=True, name="poolbench-launcher")
        self.reader.start()
        return self

    def _read(self, proc: subprocess.Popen[bytes]) -> None:
        """The launcher's messages, until it ends or ``close`` (maybe at once: an interrupt during the
        start) has let it go and closed its pipe."""
        try:
            for line in proc.stdout or ():
                try:
                    message = json.loads(line)
                except ValueError:
                    continue
                with self.cond:
                    if "exit" in message:
                        self.exits[message["exit"]] = message["code"]
                    elif "ready" in message:
                        self.ready.set()
                    else:
                        self.replies.append(message)
                    self.cond.notify_all()
        except (OSError, ValueError):  # the pipe was closed under the read
            pass
        with self.cond:
            self.dead = True
            self.ready.set()
            self.cond.notify_all()

    def spawn(self, env: dict[str, str], log_path: Path) -> ForkedProcess | None:
        if not self.ready.wait(LAUNCHER_READY_SECONDS) or self.dead or self.proc is None:
            return None
        with self.spawn_lock:
            try:
                assert self.proc.stdin is not None
                self.proc.stdin.write((json.dumps({"env": env, "log": str(log_path)}) + "\n").encode())
                self.proc.stdin.flush()
            except (OSError, ValueError):
                return None
            with self.cond:
                deadline = time.monotonic() + 10
                while not self.replies and not self.dead and time.monotonic() < deadline:
                    self.cond.wait(0.5)
                reply = self.replies.pop(0) if self.replies else None
        if not reply or "pid" not in reply:
            return None
        adopt_group(reply["pid"], "replica")  # it leads its own session (see _launcher_child)
        return ForkedProcess(self, reply["pid"])

    def exit_code(self, pid: int) -> int | None:
        with self.cond:
            if pid in self.exits:
                return self.exits[pid]
            lost = self.dead
        if lost:  # the launcher is gone and cannot tell: ask the kernel whether the replica lives
            try:
                os.kill(pid, 0)
            except ProcessLookupError:
                return 255
            except PermissionError:
                pass
        return None

    def wait_exit(self, timeout: float) -> None:
        with self.cond:
            self.cond.wait(timeout)

    def close(self) -> None:
        """End the launcher (it kills and reaps any replica still running). Idempotent; runs to its
        end whatever signal arrives meanwhile."""
        with deferred_signals():
            self._close()

    def _close(self) -> None:
        proc, self.proc = self.proc, None
        if proc is None:
            return
        try:
            if proc.stdin is not None:
                proc.stdin.close()
        except OSError:
            pass
        try:
            proc.wait(5)
        except subprocess.TimeoutExpired:
            kill_group(proc.pid)
            proc.wait(5)
        if self.reader is not None:
            self.reader.join(5)
        if proc.stdout is not None:
            proc.stdout.close()
