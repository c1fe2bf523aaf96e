"""A real Kubernetes control plane for the tests: etcd, kube-apiserver (RBAC enforced) and
kube-controller-manager (ReplicaSet, Deployment, Job, ServiceAccount, namespace and garbage-collector
controllers), built from their Go modules by ``make controlplane`` into ``build/controlplane``, on
loopback ports. Only the kubelets are simulated (``tests/kube_agent.py``)."""

from __future__ import annotations

import base64
import os
import secrets
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mlchaos_steps.core.processes import stop_process_group
from mlchaos_steps.examples.workloads import free_port

BINARIES = Path(os.environ.get("MLCHAOS_CONTROLPLANE", Path(__file__).parent.parent / "build" / "controlplane"))


def _binary(name: str) -> str:
    path = BINARIES / name
    assert path.is_file(), f"{path} is missing: `make controlplane` builds it from its Go module"
    return str(path)


def _rsa_key_pair(folder: Path) -> tuple[Path, Path]:
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import rsa

    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    private, public = folder / "sa.key", folder / "sa.pub"
    private.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                          serialization.NoEncryption()))
    public.write_bytes(key.public_key().public_bytes(serialization.Encoding.PEM,
                                                     serialization.PublicFormat.SubjectPublicKeyInfo))
    return private, public


def kubeconfig(path: Path, server: str, token: str, ca: Path, namespace: str = "default") -> Path:
    import yaml

    path.write_text(yaml.safe_dump({
        "apiVersion": "v1", "kind": "Config", "current-context": "test",
        "clusters": [{"name": "test", "cluster": {"server": server, "certificate-authority-data":
                                                   base64.b64encode(ca.read_bytes()).decode()}}],
        "users": [{"name": "test", "user": {"token": token}}],
        "contexts": [{"name": "test", "context": {"cluster": "test", "user": "test", "namespace": namespace}}],
    }))
    return path


@dataclass
class ControlPlane:
    root: Path
    processes: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        self.etcd_port, self.port = free_port(), free_port()
        self.server = f"https://127.0.0.1:{self.port}"
        self.admin_token = secrets.token_hex(16)
        (self.root / "tokens.csv").write_text(f'{self.admin_token},admin,admin,"system:masters"\n')
        self.sa_key, self.sa_pub = _rsa_key_pair(self.root)

    def _start(self, name: str, argv: list[str], env: dict[str, str] | None = None) -> None:
        log = open(self.root / f"{name}.log", "ab")  # noqa: SIM115 (the process owns it)
        self.processes[name] = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
                                                env={**os.environ, **(env or {})})

    def start(self) -> ControlPlane:
        self._start("etcd", [_binary("etcd"), "--data-dir", str(self.root / "etcd"),
                             "--listen-client-urls", f"http://127.0.0.1:{self.etcd_port}",
                             "--advertise-client-urls", f"http://127.0.0.1:{self.etcd_port}",
                             "--listen-peer-urls", f"http://127.0.0.1:{free_port()}",
                             "--log-level", "warn", "--unsafe-no-fsync"])
        self.start_apiserver()
        self.admin_config = kubeconfig(self.root / "admin.kubeconfig", self.server, self.admin_token, self.ca)
        self._start("kube-controller-manager", [
            _binary("kube-controller-manager"), f"--kubeconfig={self.admin_config}",
            "--controllers=replicaset-controller,deployment-controller,job-controller,serviceaccount-controller,"
            "namespace-controller,garbage-collector-controller,serviceaccount-token-controller",
            f"--service-account-private-key-file={self.sa_key}", "--leader-elect=false",
            "--kube-api-qps=200", "--kube-api-burst=400",
            "--bind-address=127.0.0.1", "--secure-port=0", "--v=0"])
        return self

    def start_apiserver(self) -> None:
        """(Re)start the API server on its port, with the same certificates and keys; wait until ready."""
        self._start("kube-apiserver", [
            _binary("kube-apiserver"), f"--etcd-servers=http://127.0.0.1:{self.etcd_port}",
            "--bind-address=127.0.0.1", "--advertise-address=127.0.0.1", f"--secure-port={self.port}",
            f"--cert-dir={self.root / 'certs'}", "--authorization-mode=RBAC",
            f"--token-auth-file={self.root / 'tokens.csv'}",
            "--service-account-issuer=https://kubernetes.default.svc.cluster.local",
            f"--service-account-key-file={self.sa_pub}", f"--service-account-signing-key-file={self.sa_key}",
            "--service-cluster-ip-range=10.96.0.0/16", "--allow-privileged=true", "--v=0",
            "--enable-priority-and-fairness=false", "--endpoint-reconciler-type=none"])
        self._wait_ready()

    def stop_apiserver(self) -> None:
        """Stop the API server (etcd and its data stay): clients see connections refused."""
        stop_process_group(self.processes["kube-apiserver"].pid, grace_s=5)

    @property
    def ca(self) -> Path:
        return self.root / "certs" / "apiserver.crt"

    def _wait_ready(self, timeout_s: float = 120) -> None:
        import ssl
        import urllib.request

        deadline = time.monotonic() + timeout_s
        context = ssl.create_default_context()
        context.check_hostname, context.verify_mode = False, ssl.CERT_NONE
        while time.monotonic() < deadline:
            for name, process in self.processes.items():
                if process.poll() is not None:
                    raise RuntimeError(f"{name} exited: {(self.root / f'{name}.log').read_text()[-3000:]}")
            try:
                request = urllib.request.Request(f"{self.server}/readyz",
                                                 headers={"Authorization": f"Bearer {self.admin_token}"})
                with urllib.request.urlopen(request, timeout=2, context=context) as answer:  # noqa: S310
                    if answer.status == 200:
                        return
            except OSError:
                pass
            time.sleep(0.2)
        raise RuntimeError(f"kube-apiserver not ready: {(self.root / 'kube-apiserver.log').read_text()[-3000:]}")

    def admin_client(self) -> Any:
        from kubernetes import config

        return config.new_client_from_config(str(self.admin_config))

    def start_agent(self, env: dict[str, str] | None = None) -> None:
        """The simulated kubelets, in a process of their own (every test worker shares them)."""
        import sys

        self._start("kube-agent", [sys.executable, str(Path(__file__).with_name("kube_agent.py")),
                                   str(self.admin_config)], env)

    def info(self) -> dict[str, Any]:
        """What another test process needs to use this control plane (and stop it)."""
        return {"server": self.server, "ca": str(self.ca), "admin_config": str(self.admin_config),
                "root": str(self.root), "pids": [p.pid for p in self.processes.values()]}

    def stop(self) -> None:
        for name in ("kube-agent", "kube-controller-manager", "kube-apiserver", "etcd"):
            process = self.processes.get(name)
            if process is not None and process.poll() is None:
                stop_process_group(process.pid, grace_s=5)


@dataclass
class Cluster:
    """The running control plane as a test sees it: its address, CA, and an admin ApiClient."""

    server: str
    ca: Path
    admin_config: Path
    root: Path
    created: list[str] = field(default_factory=list)

    @classmethod
    def from_kubeconfig(cls, path: Path, root: Path) -> Cluster:
        """Any cluster a kubeconfig reaches with cluster-admin rights (`make e2e-kind`)."""
        import base64

        import yaml

        config = yaml.safe_load(path.read_text())
        context = next(c["context"] for c in config["contexts"] if c["name"] == config["current-context"])
        cluster = next(c["cluster"] for c in config["clusters"] if c["name"] == context["cluster"])
        ca = root / "ca.crt"
        if cluster.get("certificate-authority-data"):
            ca.write_bytes(base64.b64decode(cluster["certificate-authority-data"]))
        else:
            ca.write_bytes(Path(cluster["certificate-authority"]).read_bytes())
        return cls(cluster["server"], ca, path, root)

    def delete_namespaces(self) -> None:
        """What the tests created (a real cluster outlives the run)."""
        from kubernetes import client

        core = client.CoreV1Api(self.admin())
        for name in self.created:
            try:
                core.delete_namespace(name)
            except client.ApiException as exc:
                if exc.status != 404:
                    raise

    def admin(self) -> Any:
        from kubernetes import config

        return config.new_client_from_config(str(self.admin_config))

    def namespace(self, name: str, labels: dict[str, str] | None = None) -> str:
        """A fresh namespace (tests never share one)."""
        import uuid

        from kubernetes import client

        full = f"{name}-{uuid.uuid4().hex[:6]}"
        client.CoreV1Api(self.admin()).create_namespace({"metadata": {"name": full, "labels": labels or {}}})
        self.created.append(full)
        return full

    def service_account_config(self, namespace: str, account: str, path: Path) -> Path:
        """A kubeconfig holding a token of ``account`` (what the library under test runs with)."""
        from kubernetes import client

        token = client.CoreV1Api(self.admin()).create_namespaced_service_account_token(
            account, namespace, {"spec": {"expirationSeconds": 3600}}).status.token
        return kubeconfig(path, self.server, token, self.ca, namespace)
