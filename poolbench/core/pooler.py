"""PgBouncer's configuration for one variant, as text (pure: the local runner writes it to files,
the operator into a Secret).

The pooler serves one database (the benchmark's) with the variant's pool settings; clients log in
with SCRAM against a generated auth file that holds plain passwords (PgBouncer then logs in to the
server with the same password, whatever method the server asks for). The admin console (the
``pgbouncer`` virtual database) is open to one generated admin user, for ``SHOW POOLS`` and for
dropping the server connections between steps (``KILL`` then ``RESUME``).
"""

from __future__ import annotations

from .spec import RESERVE_POOL_TIMEOUT_SECONDS, PoolerSpec

ADMIN_USER = "poolbench_admin"
ADMIN_DATABASE = "pgbouncer"
LISTEN_PORT = 6432
#: Where the cluster pod reads its configuration (a Secret volume); the local runner uses a temp dir.
CONFIG_DIR = "/etc/poolbench-pgbouncer"


def _quoted(value: str) -> str:
    """A userlist field: double quotes, a quote inside doubled (PgBouncer's auth_file syntax)."""
    return '"' + value.replace('"', '""') + '"'


def userlist(passwords: dict[str, str]) -> str:
    """The auth file: one ``"user" "password"`` line per login role (plain text, so SCRAM works both ways)."""
    return "".join(f"{_quoted(user)} {_quoted(password)}\n" for user, password in sorted(passwords.items()))


def pgbouncer_ini(
    pooler: PoolerSpec,
    *,
    server_host: str,
    server_port: int,
    database: str,
    listen_addr: str,
    listen_port: int,
    auth_file: str,
) -> str:
    """pgbouncer.ini for one instance. Logging goes to stderr (a log file or the pod log); no pid
    file and no Unix socket, so the instance needs no writable directory."""
    settings = {
        "listen_addr": listen_addr,
        "listen_port": str(listen_port),
        "unix_socket_dir": "",
        "auth_type": "scram-sha-256",
        "auth_file": auth_file,
        "admin_users": ADMIN_USER,
        "stats_users": ADMIN_USER,
        "pool_mode": pooler.pool_mode,
        "default_pool_size": str(pooler.default_pool_size),
        "reserve_pool_size": str(pooler.reserve_pool_size),
        "reserve_pool_timeout": str(RESERVE_POOL_TIMEOUT_SECONDS),
        "max_client_conn": str(pooler.max_client_conn),
        "max_db_connections": "0",
        "server_idle_timeout": str(pooler.server_idle_timeout_seconds),
        "query_wait_timeout": str(pooler.query_wait_timeout_seconds),
        # Client connections come and go by the thousand (NullPool): one log line each would drown the rest.
        "log_connections": "0",
        "log_disconnections": "0",
        "log_pooler_errors": "1",
        "ignore_startup_parameters": "extra_float_digits",
    }
    lines = ["[databases]", f"{database} = host={server_host} port={server_port} dbname={database}", "", "[pgbouncer]"]
    lines += [f"{key} = {value}" for key, value in settings.items()]
    return "\n".join(lines) + "\n"
