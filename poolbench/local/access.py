"""What the server's unprivileged user can reach, found out without changing any mode.

As root, PostgreSQL refuses to start, so the server runs as a system user, created on first use.
That user must reach the run's directory and the binaries, and poolbench never changes the mode of a
directory it did not create (a chmod of a private TMPDIR's parents, or of a virtualenv's, would be
permanent and unasked): these checks only read modes, the run goes to a temporary base the user can
already reach, and only directories poolbench creates get a mode.
"""

from __future__ import annotations

import os
import pwd
import subprocess
import tempfile
from pathlib import Path
from typing import Any

from .errors import EnvironmentFailure

SYSTEM_USER = "embedded_postgres"
#: Where a run goes when the server user cannot reach ``tempfile.gettempdir()``: checked in order, never chmodded.
TEMP_BASES = ("/var/tmp", "/tmp", "/dev/shm")


# -- the server's user ------------------------------------------------------------------------------


def run_as_kwargs(user: str | None) -> dict[str, Any]:
    """preexec-free way to run a child as another user: subprocess's user/group args."""
    if user is None:
        return {}
    entry = pwd.getpwnam(user)
    return {"user": entry.pw_uid, "group": entry.pw_gid, "extra_groups": []}


def user_ids(user: str | None) -> tuple[int, int]:
    """uid and gid the server runs with (ourselves when ``user`` is None)."""
    if user is None:
        return os.geteuid(), os.getegid()
    entry = pwd.getpwnam(user)
    return entry.pw_uid, entry.pw_gid


def ensure_system_user() -> str:
    """PostgreSQL refuses to run as root: it runs as this system user, created on first use."""
    try:
        pwd.getpwnam(SYSTEM_USER)
    except KeyError:
        try:
            subprocess.run(
                ["useradd", "--system", "--shell", "/usr/sbin/nologin", SYSTEM_USER],
                check=True,
                capture_output=True,
                text=True,
            )
        except (OSError, subprocess.CalledProcessError) as err:
            try:
                pwd.getpwnam(SYSTEM_USER)  # another run created it meanwhile
            except KeyError:
                detail = getattr(err, "stderr", None) or err
                raise EnvironmentFailure(
                    f"could not create the system user {SYSTEM_USER} that runs PostgreSQL "
                    f"as root: {str(detail).strip()}"
                ) from None
    return SYSTEM_USER


# -- what the server user may reach, without changing anything ---------------------------------------


def _grants(st: os.stat_result, uid: int, gid: int, want: int) -> bool:
    """Whether a file's mode gives uid/gid every permission in ``want`` (r=4, w=2, x=1).

    POSIX classes: the owner's bits if uid owns it, else the group's if gid is its group, else
    others'. ACLs are not consulted: a false "no" only costs a copy, never a failed run.
    """
    if st.st_uid == uid:
        bits = st.st_mode >> 6
    elif st.st_gid == gid:
        bits = st.st_mode >> 3
    else:
        bits = st.st_mode
    return bits & want == want


def blocked_at(path: Path, uid: int, gid: int) -> Path | None:
    """The outermost directory on the way to ``path`` (itself included) that uid/gid cannot search,
    or None. Both the path as written and its resolved form are walked (a symlinked component is
    searched in its target); a path that cannot be inspected counts as blocked."""
    try:
        for chain in (Path(os.path.abspath(path)), path.resolve()):
            for directory in reversed([chain, *chain.parents]):
                if not _grants(directory.stat(), uid, gid, 1):
                    return directory
    except OSError:
        return path
    return None


def reachable_run_base(uid: int, gid: int) -> Path:
    """Where the run's directory goes so that the server user can reach it as things are:
    ``tempfile.gettempdir()`` when it can, else the first of ``TEMP_BASES``."""
    tried: list[str] = []
    for base in dict.fromkeys([Path(tempfile.gettempdir()), *map(Path, TEMP_BASES)]):
        if not base.is_dir() or not os.access(base, os.W_OK | os.X_OK):
            tried.append(f"{base} (not a writable directory)")
            continue
        blocked = blocked_at(base, uid, gid)
        if blocked is None:
            return base
        tried.append(f"{base} ({blocked} is not searchable by others)")
    raise EnvironmentFailure(
        f"no temporary directory that the PostgreSQL user {SYSTEM_USER} can reach: {'; '.join(tried)}. "
        "Set TMPDIR to a writable directory whose parents are all searchable by others (o+x); "
        "poolbench does not change the mode of directories it did not create"
    )


def readable_in_place(root: Path, uid: int, gid: int) -> bool:
    """Whether uid/gid can reach ``root`` and read everything in it (and run its executables) as it
    is: checked on the modes, nothing is changed."""
    if blocked_at(root, uid, gid) is not None:
        return False

    def fail(err: OSError) -> None:
        raise err

    try:
        if not _grants(root.stat(), uid, gid, 5):
            return False
        for dirpath, dirs, files in os.walk(root, onerror=fail):
            for name in dirs:
                if not _grants(os.stat(os.path.join(dirpath, name)), uid, gid, 5):
                    return False
            for name in files:
                st = os.stat(os.path.join(dirpath, name))
                if not _grants(st, uid, gid, 5 if st.st_mode & 0o111 else 4):
                    return False
    except OSError:
        return False
    return True


# -- directories poolbench creates: only those get a mode ----------------------------------------------


def make_dirs(path: Path, mode: int) -> None:
    """Create ``path`` and its missing parents with exactly ``mode``; only directories this call
    created have their mode set (an existing one, whoever made it, is left as it is)."""
    missing: list[Path] = []
    current = path
    while not os.path.lexists(current):
        missing.append(current)
        current = current.parent
    for directory in reversed(missing):
        try:
            directory.mkdir()
        except FileExistsError:
            continue
        directory.chmod(mode)  # mkdir's mode is filtered by the umask
