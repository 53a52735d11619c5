"""A real Kubernetes control plane for tests: etcd, kube-apiserver, kube-controller-manager, kube-scheduler.

No Docker, no kubelet: the binaries built by ``hack/build-control-plane.sh`` run as local processes on
127.0.0.1 with free ports, certificates generated here (``cryptography``), data in a temporary
directory. Pods are run by the stand-in kubelet in ``podrunner/``.

    cp = ControlPlane.from_env().start()
    cp.kubeconfig          # admin kubeconfig (client cert, O=system:masters)
    cp.kubeconfig_for_service_account("ns", "sa")   # a kubeconfig with a TokenRequest token
    cp.stop()
"""

from __future__ import annotations

import atexit
import base64
import contextlib
import ctypes
import datetime as dt
import ipaddress
import os
import shutil
import signal
import socket
import ssl
import subprocess
import tempfile
import time
import urllib.request
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

if TYPE_CHECKING:
    from .kube import Kube

ROOT = Path(__file__).resolve().parents[2]
BINARIES = ("etcd", "kube-apiserver", "kube-controller-manager", "kube-scheduler")
SERVICE_CIDR = "10.0.0.0/24"


class ControlPlaneError(RuntimeError):
    pass


def find_bin_dir() -> Path:
    """$POOLBENCH_K8S_BIN, else the last stdout line of hack/build-control-plane.sh."""
    env = os.environ.get("POOLBENCH_K8S_BIN")
    if env:
        path = Path(env)
    else:
        script = ROOT / "hack" / "build-control-plane.sh"
        if not script.exists():
            raise ControlPlaneError(f"POOLBENCH_K8S_BIN is unset and {script} does not exist")
        proc = subprocess.run([str(script)], cwd=ROOT, capture_output=True, text=True)
        lines = proc.stdout.strip().splitlines()
        if proc.returncode != 0 or not lines:
            raise ControlPlaneError(f"{script} failed (exit {proc.returncode}):\n{proc.stderr[-3000:]}")
        path = Path(lines[-1].strip())
    missing = [b for b in BINARIES if not os.access(path / b, os.X_OK)]
    if missing:
        raise ControlPlaneError(f"control-plane binaries missing in {path}: {', '.join(missing)}")
    return path


def free_port(taken: set[int] | None = None) -> int:
    while True:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port: int = s.getsockname()[1]
        if taken is None or port not in taken:
            if taken is not None:
                taken.add(port)
            return port


# --- certificates --------------------------------------------------------------------------------


def _name(cn: str, org: str | None = None) -> x509.Name:
    attrs = [x509.NameAttribute(NameOID.COMMON_NAME, cn)]
    if org:
        attrs.append(x509.NameAttribute(NameOID.ORGANIZATION_NAME, org))
    return x509.Name(attrs)


def _pem_key(key: ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


def _pem_cert(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)


@dataclass
class Certs:
    dir: Path

    @property
    def ca_crt(self) -> Path:
        return self.dir / "ca.crt"

    @property
    def ca_key(self) -> Path:
        return self.dir / "ca.key"

    @property
    def serving_crt(self) -> Path:
        return self.dir / "apiserver.crt"

    @property
    def serving_key(self) -> Path:
        return self.dir / "apiserver.key"

    @property
    def admin_crt(self) -> Path:
        return self.dir / "admin.crt"

    @property
    def admin_key(self) -> Path:
        return self.dir / "admin.key"

    @property
    def sa_key(self) -> Path:
        return self.dir / "sa.key"

    @property
    def sa_pub(self) -> Path:
        return self.dir / "sa.pub"

    def generate(self, extra_ips: tuple[str, ...] = ()) -> Certs:
        self.dir.mkdir(parents=True, exist_ok=True)
        now = dt.datetime.now(dt.UTC) - dt.timedelta(minutes=5)
        later = now + dt.timedelta(days=2)
        ca_key = ec.generate_private_key(ec.SECP256R1())
        ca_name = _name("poolbench-test-ca")
        ca = (
            x509.CertificateBuilder()
            .subject_name(ca_name)
            .issuer_name(ca_name)
            .public_key(ca_key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now)
            .not_valid_after(later)
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .add_extension(
                x509.KeyUsage(
                    digital_signature=True,
                    key_cert_sign=True,
                    crl_sign=True,
                    content_commitment=False,
                    key_encipherment=False,
                    data_encipherment=False,
                    key_agreement=False,
                    encipher_only=False,
                    decipher_only=False,
                ),
                critical=True,
            )
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), critical=False)
            .sign(ca_key, hashes.SHA256())
        )

        def leaf(
            cn: str,
            org: str | None,
            usages: list[x509.ObjectIdentifier],
            sans: list[x509.GeneralName] | None = None,
        ) -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate]:
            key = ec.generate_private_key(ec.SECP256R1())
            b = (
                x509.CertificateBuilder()
                .subject_name(_name(cn, org))
                .issuer_name(ca_name)
                .public_key(key.public_key())
                .serial_number(x509.random_serial_number())
                .not_valid_before(now)
                .not_valid_after(later)
                .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
                .add_extension(x509.ExtendedKeyUsage(usages), critical=False)
                .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False)
            )
            if sans:
                b = b.add_extension(x509.SubjectAlternativeName(sans), critical=False)
            return key, b.sign(ca_key, hashes.SHA256())

        svc_ip = next(ipaddress.IPv4Network(SERVICE_CIDR).hosts())
        serving_key, serving = leaf(
            "kube-apiserver",
            None,
            [ExtendedKeyUsageOID.SERVER_AUTH],
            [
                x509.IPAddress(ipaddress.ip_address("127.0.0.1")),
                x509.IPAddress(svc_ip),
                *(x509.IPAddress(ipaddress.ip_address(ip)) for ip in extra_ips),
                x509.DNSName("localhost"),
                x509.DNSName("kubernetes"),
                x509.DNSName("kubernetes.default"),
                x509.DNSName("kubernetes.default.svc"),
                x509.DNSName("kubernetes.default.svc.cluster.local"),
            ],
        )
        admin_key, admin = leaf("poolbench-admin", "system:masters", [ExtendedKeyUsageOID.CLIENT_AUTH])
        sa_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)

        self.ca_crt.write_bytes(_pem_cert(ca))
        self.ca_key.write_bytes(_pem_key(ca_key))
        self.serving_crt.write_bytes(_pem_cert(serving))
        self.serving_key.write_bytes(_pem_key(serving_key))
        self.admin_crt.write_bytes(_pem_cert(admin))
        self.admin_key.write_bytes(_pem_key(admin_key))
        self.sa_key.write_bytes(_pem_key(sa_key))
        self.sa_pub.write_bytes(
            sa_key.public_key().public_bytes(
                serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
            )
        )
        for p in self.dir.iterdir():
            os.chmod(p, 0o600)
        return self


def _b64(path: Path) -> str:
    return base64.b64encode(path.read_bytes()).decode()


def write_kubeconfig(
    path: Path,
    server: str,
    ca: Path,
    *,
    user: str,
    client_crt: Path | None = None,
    client_key: Path | None = None,
    token: str | None = None,
    namespace: str | None = None,
) -> Path:
    creds: dict[str, Any] = {}
    if client_crt is not None:
        assert client_key is not None, "a client certificate needs its key"
        creds = {"client-certificate-data": _b64(client_crt), "client-key-data": _b64(client_key)}
    if token is not None:
        creds = {"token": token}
    context = {"cluster": "poolbench", "user": user}
    if namespace:
        context["namespace"] = namespace
    doc = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": "poolbench", "cluster": {"server": server, "certificate-authority-data": _b64(ca)}}],
        "users": [{"name": user, "user": creds}],
        "contexts": [{"name": user, "context": context}],
        "current-context": user,
    }
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    os.chmod(path, 0o600)
    return path


# --- processes -----------------------------------------------------------------------------------

_libc = ctypes.CDLL(None, use_errno=True)
PR_SET_PDEATHSIG = 1


def _die_with_parent() -> None:  # runs in the child before exec (started from the main thread)
    _libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL)


def stop_process(proc: subprocess.Popen[bytes], grace: float = 10.0) -> None:
    """SIGTERM, then SIGKILL after ``grace``; by PID (each component is its own process group)."""
    if proc.poll() is not None:
        return
    for sig, wait in ((signal.SIGTERM, grace), (signal.SIGKILL, 5.0)):
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, sig)
        try:
            proc.wait(wait)
            return
        except subprocess.TimeoutExpired:
            continue


def kill_until_gone(list_pids: Callable[[], Iterable[int]], what: str, attempts: int = 50) -> None:
    """SIGKILLs whatever ``list_pids()`` returns until it returns nothing (processes that fork as they die)."""
    for _ in range(attempts):
        pids = list_pids()
        if not pids:
            return
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        time.sleep(0.1)
    raise RuntimeError(f"{what} survived SIGKILL")


def spawn_logged(
    name: str, argv: list[str], logs_dir: Path, cwd: Path, env: dict[str, str] | None = None
) -> subprocess.Popen[bytes]:
    """A long-running component: its own process group, output in ``logs_dir/NAME.log``, killed with us."""
    with open(logs_dir / f"{name}.log", "ab") as log:  # the child keeps its own copy of the descriptor
        return subprocess.Popen(
            argv,
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            cwd=cwd,
            start_new_session=True,
            preexec_fn=_die_with_parent,
            env=None if env is None else {**os.environ, **env},
        )


def log_tail(logs_dir: Path, name: str, lines: int = 40) -> str:
    try:
        text = (logs_dir / f"{name}.log").read_text(errors="replace")
    except OSError:
        return ""
    return "\n".join(text.splitlines()[-lines:])


def wait_running(
    check: Callable[[], object],
    deadline: float,
    what: str,
    watched: dict[str, subprocess.Popen[bytes]],
    logs_dir: Path,
    error: type[Exception] = ControlPlaneError,
) -> None:
    """Polls ``check()`` (exceptions mean "not yet") until it is true; fails at once, with the log's
    tail, when a watched component exits, and with every tail at the deadline."""
    while True:
        for name, proc in watched.items():
            if proc.poll() is not None:
                raise error(
                    f"{name} exited with {proc.returncode} while waiting for {what} "
                    f"(logs: {logs_dir}):\n{log_tail(logs_dir, name)}"
                )
        with contextlib.suppress(Exception):
            if check():
                return
        if time.monotonic() > deadline:
            tails = "\n".join(f"--- {n}\n{log_tail(logs_dir, n, 15)}" for n in watched)
            raise error(f"timed out waiting for {what} (logs: {logs_dir}):\n{tails}")
        time.sleep(0.25)


def http_ok(url: str, timeout: float = 2, context: ssl.SSLContext | None = None) -> bool:
    with urllib.request.urlopen(url, timeout=timeout, context=context) as resp:
        return bool(resp.status == 200)


@dataclass
class ControlPlane:
    bin_dir: Path
    work_dir: Path = field(default_factory=lambda: Path(tempfile.mkdtemp(prefix="poolbench-k8s-")))
    logs_dir: Path = field(default_factory=lambda: Path(tempfile.mkdtemp(prefix="poolbench-k8s-logs-")))
    server: str = ""
    kubeconfig: Path | None = None
    processes: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)
    ports: dict[str, int] = field(default_factory=dict)
    #: Where kube-apiserver listens and what it advertises. A real node binds it on the pod bridge's
    #: address, so pods reach it through the ``kubernetes`` Service (its endpoint is then reconciled).
    bind_address: str = "127.0.0.1"
    #: More kube-apiserver flags (a real node adds the kubelet client certificate).
    extra_apiserver_args: list[str] = field(default_factory=list)

    @classmethod
    def from_env(cls) -> ControlPlane:
        return cls(bin_dir=find_bin_dir())

    @property
    def certs(self) -> Certs:
        return Certs(self.work_dir / "pki")

    # ---------------------------------------------------------------------------------------------
    def start(self, timeout: float = 120.0) -> ControlPlane:
        atexit.register(self.stop, keep_logs=True)
        deadline = time.monotonic() + timeout
        certs = self.certs.generate(extra_ips=(self.bind_address,) if self.bind_address != "127.0.0.1" else ())
        taken: set[int] = set()
        p = self.ports
        for name in ("etcd", "etcd_peer", "apiserver", "controller_manager", "scheduler"):
            p[name] = free_port(taken)
        self.server = f"https://{self.bind_address}:{p['apiserver']}"
        self.kubeconfig = kubeconfig = write_kubeconfig(
            self.work_dir / "admin.kubeconfig",
            self.server,
            certs.ca_crt,
            user="admin",
            client_crt=certs.admin_crt,
            client_key=certs.admin_key,
        )

        etcd_url = f"http://127.0.0.1:{p['etcd']}"
        peer_url = f"http://127.0.0.1:{p['etcd_peer']}"
        self._spawn(
            "etcd",
            [
                "--name=default",
                f"--data-dir={self.work_dir / 'etcd'}",
                f"--listen-client-urls={etcd_url}",
                f"--advertise-client-urls={etcd_url}",
                f"--listen-peer-urls={peer_url}",
                f"--initial-advertise-peer-urls={peer_url}",
                f"--initial-cluster=default={peer_url}",
                "--unsafe-no-fsync=true",
                "--log-level=warn",
            ],
        )
        self._wait(lambda: self._http_ok(f"{etcd_url}/health"), deadline, "etcd /health", ["etcd"])

        self._spawn(
            "kube-apiserver",
            [
                f"--etcd-servers={etcd_url}",
                f"--secure-port={p['apiserver']}",
                f"--bind-address={self.bind_address}",
                f"--advertise-address={self.bind_address}",
                f"--endpoint-reconciler-type={'none' if self.bind_address == '127.0.0.1' else 'lease'}",
                f"--service-cluster-ip-range={SERVICE_CIDR}",
                "--allow-privileged=true",
                "--authorization-mode=Node,RBAC",
                "--service-account-issuer=https://kubernetes.default.svc.cluster.local",
                f"--service-account-key-file={certs.sa_pub}",
                f"--service-account-signing-key-file={certs.sa_key}",
                f"--client-ca-file={certs.ca_crt}",
                f"--tls-cert-file={certs.serving_crt}",
                f"--tls-private-key-file={certs.serving_key}",
                f"--cert-dir={self.work_dir / 'apiserver-certs'}",
                "--enable-admission-plugins=ServiceAccount,NamespaceLifecycle",
                "--profiling=false",
                *self.extra_apiserver_args,
            ],
        )
        self._wait(
            lambda: self._https_ok(f"{self.server}/readyz"),
            deadline,
            "kube-apiserver /readyz",
            ["etcd", "kube-apiserver"],
        )

        kc = str(self.kubeconfig)
        self._spawn(
            "kube-controller-manager",
            [
                f"--kubeconfig={kc}",
                f"--authentication-kubeconfig={kc}",
                f"--authorization-kubeconfig={kc}",
                "--leader-elect=false",
                "--use-service-account-credentials=false",
                "--controllers=*",
                f"--service-account-private-key-file={certs.sa_key}",
                f"--root-ca-file={certs.ca_crt}",
                "--bind-address=127.0.0.1",
                f"--secure-port={p['controller_manager']}",
                f"--cert-dir={self.work_dir / 'kcm-certs'}",
                "--node-monitor-period=2s",
            ],
        )
        self._spawn(
            "kube-scheduler",
            [
                f"--kubeconfig={kc}",
                f"--authentication-kubeconfig={kc}",
                f"--authorization-kubeconfig={kc}",
                "--leader-elect=false",
                "--bind-address=127.0.0.1",
                f"--secure-port={p['scheduler']}",
                f"--cert-dir={self.work_dir / 'scheduler-certs'}",
            ],
        )
        everything = list(self.processes)
        self._wait(
            lambda: self._https_ok(f"https://127.0.0.1:{p['controller_manager']}/healthz", verify=False),
            deadline,
            "kube-controller-manager /healthz",
            everything,
        )
        self._wait(
            lambda: self._https_ok(f"https://127.0.0.1:{p['scheduler']}/healthz", verify=False),
            deadline,
            "kube-scheduler /healthz",
            everything,
        )
        # The service-account controller (in the controller manager) is really working:
        from .kube import Kube

        kube = Kube(kubeconfig)
        try:
            self._wait(
                lambda: kube.get_or_none("/api/v1/namespaces/default/serviceaccounts/default"),
                deadline,
                "the default ServiceAccount (controller manager working)",
                everything,
            )
        finally:
            kube.close()
        return self

    def _spawn(self, name: str, args: list[str]) -> None:
        self.processes[name] = spawn_logged(name, [str(self.bin_dir / name), *args], self.logs_dir, self.work_dir)

    def log_tail(self, name: str, lines: int = 40) -> str:
        return log_tail(self.logs_dir, name, lines)

    def _wait(self, check: Callable[[], object], deadline: float, what: str, watched: list[str]) -> None:
        wait_running(check, deadline, what, {n: self.processes[n] for n in watched}, self.logs_dir)

    @staticmethod
    def _http_ok(url: str) -> bool:
        return http_ok(url)

    def _ssl_context(self, verify: bool = True) -> ssl.SSLContext:
        if not verify:
            ctx = ssl.create_default_context()
            ctx.check_hostname = False
            ctx.verify_mode = ssl.CERT_NONE
            return ctx
        ctx = ssl.create_default_context(cafile=str(self.certs.ca_crt))
        ctx.load_cert_chain(str(self.certs.admin_crt), str(self.certs.admin_key))
        return ctx

    def _https_ok(self, url: str, verify: bool = True) -> bool:
        return http_ok(url, timeout=3, context=self._ssl_context(verify))

    # ---------------------------------------------------------------------------------------------
    def client(self) -> Kube:
        """A ``kube.Kube`` with admin rights."""
        from .kube import Kube

        assert self.kubeconfig is not None, "start() the control plane first"
        return Kube(self.kubeconfig)

    def kubeconfig_for_service_account(self, namespace: str, name: str, expiration_seconds: int = 86400) -> Path:
        """A kubeconfig authenticating as ServiceAccount namespace/name (token from the TokenRequest API)."""
        kube = self.client()
        try:
            resp = kube.create(
                f"/api/v1/namespaces/{namespace}/serviceaccounts/{name}/token",
                {
                    "apiVersion": "authentication.k8s.io/v1",
                    "kind": "TokenRequest",
                    "spec": {"expirationSeconds": expiration_seconds},
                },
            )
        finally:
            kube.close()
        token = resp["status"]["token"]
        path = self.work_dir / f"sa-{namespace}-{name}.kubeconfig"
        return write_kubeconfig(
            path, self.server, self.certs.ca_crt, user=f"{namespace}-{name}", token=token, namespace=namespace
        )

    def stop(self, keep_logs: bool = False) -> None:
        """Stops every component by PID (reverse start order); removes the data; logs kept on request."""
        for name in reversed(list(self.processes)):
            stop_process(self.processes.pop(name))
        shutil.rmtree(self.work_dir, ignore_errors=True)
        if not keep_logs:
            shutil.rmtree(self.logs_dir, ignore_errors=True)
        with contextlib.suppress(Exception):
            atexit.unregister(self.stop)
