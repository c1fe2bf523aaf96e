"""Kubernetes, through the official client: credentials, protected namespaces, calls that say which
permission they lacked, retries while the API server is away, and pod readiness.

Credentials, first match: ``kubeconfig``/``context`` given in the spec, ``$KUBECONFIG``, the in-cluster
service account (a step pod), ``~/.kube/config``. The ``kubernetes`` package loads inside these
functions (DAG files that build stages never import it).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any, TypeVar

from mlchaos_steps.errors import InfrastructureError, SafetyError, TargetBusy

PROTECTED_NAMESPACES = frozenset({"kube-system", "kube-public", "kube-node-lease"})
PROTECTED_LABEL = "mlchaos.io/protected"
RETRY_SECONDS = 30.0  # how long a call keeps retrying while the API server is away (MLCHAOS_KUBE_RETRY_S)
API_GROUPS = {"leases": "coordination.k8s.io", "deployments": "apps", "replicasets": "apps", "jobs": "batch",
              "rollouts": "argoproj.io"}

T = TypeVar("T")


def api_client(kubeconfig: str | None = None, context: str | None = None, pool: int | None = None) -> Any:
    """An ApiClient for the spec's credentials (see the module doc); ``pool``: connections kept open (the
    client's default is 5 per CPU, too few for a stage deleting hundreds of pods at once)."""
    from kubernetes import client, config

    configuration = type.__call__(client.Configuration)
    if pool:
        configuration.connection_pool_maxsize = pool
    if kubeconfig or context or os.environ.get("KUBECONFIG"):
        # read $KUBECONFIG now: the client reads it once, when it is first imported
        return config.new_client_from_config(config_file=kubeconfig or os.environ.get("KUBECONFIG"), context=context,
                                             client_configuration=configuration)
    try:
        config.load_incluster_config(client_configuration=configuration)
        return client.ApiClient(configuration)
    except config.ConfigException:
        return config.new_client_from_config(client_configuration=configuration)


def call(verb: str, resource: str, namespace: str | None, function: Callable[..., T], *args: Any,
         **kwargs: Any) -> T:
    """``function(*args, **kwargs)``: a 403 becomes an InfrastructureError (exit 3) naming the verb and
    resource the credentials lack; the API server unreachable or answering 5xx is retried with backoff
    for up to ``MLCHAOS_KUBE_RETRY_S`` seconds (default 30: an API server restarting), then
    InfrastructureError (the verdict is inconclusive, never a pass)."""
    from kubernetes.client import ApiException
    from tenacity import Retrying, retry_if_exception, stop_after_delay, wait_exponential

    where = f" in namespace {namespace}" if namespace else ""

    def transient(exc: BaseException) -> bool:
        if isinstance(exc, ApiException):
            return exc.status is None or exc.status == 0 or exc.status >= 500 or exc.status == 429
        return isinstance(exc, OSError) or type(exc).__name__ in ("MaxRetryError", "ProtocolError",
                                                                  "NewConnectionError")

    try:
        budget = float(os.environ.get("MLCHAOS_KUBE_RETRY_S", RETRY_SECONDS))
        for attempt in Retrying(stop=stop_after_delay(budget), wait=wait_exponential(0.2, max=3),
                                retry=retry_if_exception(transient), reraise=True):
            with attempt:
                return function(*args, **kwargs)
    except ApiException as exc:
        if exc.status == 403:
            raise InfrastructureError(
                f"forbidden: the credentials may not {verb} {resource}{where}: grant that verb on that resource "
                "to the stage's ServiceAccount (docker/k8s/rbac.yaml lists what the stages need)") from exc
        if exc.status in (None, 0) or exc.status >= 500 or exc.status == 429:
            raise InfrastructureError(f"the API server did not answer {verb} {resource}{where}: {exc.status} "
                                      f"{exc.reason}") from exc
        raise
    except Exception as exc:
        if transient(exc):
            raise InfrastructureError(f"the API server is unreachable ({verb} {resource}{where}): "
                                      f"{type(exc).__name__}: {exc}") from exc
        raise
    raise AssertionError("unreachable")  # pragma: no cover


def require(api: Any, namespace: str, needs: list[tuple[str, str]]) -> None:
    """Ask the API server (SelfSubjectAccessReview) whether these credentials may do each ``(verb,
    resource)`` in ``namespace``; the first one refused stops the stage before it changes anything, with
    an InfrastructureError (exit 3) naming the verb and resource."""
    from concurrent.futures import ThreadPoolExecutor

    from kubernetes import client

    authorization = client.AuthorizationV1Api(api)

    def allowed(need: tuple[str, str]) -> bool:
        verb, resource = need
        kind, _, subresource = resource.partition("/")  # pods/log: resource pods, subresource log
        attributes = {"namespace": namespace, "verb": verb, "resource": kind, "subresource": subresource,
                      "group": API_GROUPS.get(kind, ""), **({"name": namespace} if kind == "namespaces" else {})}
        review = call("create", "selfsubjectaccessreviews", None, authorization.create_self_subject_access_review,
                      {"spec": {"resourceAttributes": attributes}})
        return bool(review.status.allowed)

    with ThreadPoolExecutor(min(8, len(needs)) or 1, "access-review") as pool:  # one round trip, not one per need
        answers = list(pool.map(allowed, needs))
    for (verb, resource), ok in zip(needs, answers, strict=True):
        if not ok:
            raise InfrastructureError(
                f"forbidden: the credentials may not {verb} {resource} in namespace {namespace}: grant that verb on "
                "that resource to the stage's ServiceAccount (docker/k8s/rbac.yaml lists what the stages need)")


def check_namespace(core: Any, namespace: str, field: str = "spec.target.kubernetes.namespace") -> None:
    """Refuse (exit 2, before anything changes) the system namespaces and any labelled protected."""
    if namespace in PROTECTED_NAMESPACES:
        raise SafetyError(field, f"{namespace!r} is a protected namespace: chaos never runs there")
    labels = call("get", "namespaces", None, core.read_namespace, namespace).metadata.labels or {}
    if str(labels.get(PROTECTED_LABEL, "")).lower() == "true":
        raise SafetyError(field, f"namespace {namespace!r} is labelled {PROTECTED_LABEL}=true: chaos never runs "
                                 "there (remove the label to allow it)")


def list_pods_raw(core: Any, namespace: str, selector: str, field_selector: str | None = None) -> dict[str, Any]:
    """The pod list as plain JSON (``items``, ``metadata.resourceVersion``): a thousand pods parse in a
    fraction of the time the client's models take."""
    import json

    response = call("list", "pods", namespace, core.list_namespaced_pod, namespace, label_selector=selector,
                    field_selector=field_selector, _preload_content=False)
    return json.loads(response.data)


def is_ready_raw(pod: dict[str, Any]) -> bool:
    """``is_ready`` on a pod as plain JSON."""
    if pod["metadata"].get("deletionTimestamp") or pod.get("status", {}).get("phase") != "Running":
        return False
    return any(c.get("type") == "Ready" and c.get("status") == "True"
               for c in pod.get("status", {}).get("conditions") or [])


def owner_raw(pod: dict[str, Any]) -> str | None:
    """The controller that replaces this pod when it is deleted (``ReplicaSet/serve-6f7``), or None."""
    for reference in pod["metadata"].get("ownerReferences") or []:
        if reference.get("controller"):
            return f"{reference['kind']}/{reference['name']}"
    return None


# -- Leases: one run per target across machines ---------------------------------------------------------
def lease_name(target_id: str) -> str:
    """The Lease that stands for a target (``mlchaos-`` and a digest: any target id fits a name)."""
    import hashlib

    return "mlchaos-" + hashlib.sha256(target_id.encode()).hexdigest()[:20]


def acquire_lease(api: Any, namespace: str, name: str, holder: str, duration_s: int, target_id: str,
                  crashed_hint: str = "run `mlchaos restore --run-key {holder}` if it crashed") -> str:
    """Take (or renew) the Lease ``namespace/name`` for run ``holder``. A Lease another run holds and has
    renewed within its duration raises TargetBusy (exit 3); an expired one is taken over. Every write
    carries the resourceVersion it read, so two runs racing for it cannot both win. Returns the new
    resourceVersion."""
    from datetime import UTC, datetime, timedelta

    from kubernetes import client

    coordination = client.CoordinationV1Api(api)
    now = datetime.now(UTC)
    try:
        lease = call("get", "leases", namespace, coordination.read_namespaced_lease, name, namespace)
    except client.ApiException as exc:
        if exc.status != 404:
            raise
        body = client.V1Lease(
            metadata=client.V1ObjectMeta(name=name, labels={"app.kubernetes.io/part-of": "mlchaos-steps"},
                                         annotations={"mlchaos.io/target": target_id[:1000]}),
            spec=client.V1LeaseSpec(holder_identity=holder, lease_duration_seconds=duration_s, acquire_time=now,
                                    renew_time=now, lease_transitions=0))
        try:
            return call("create", "leases", namespace, coordination.create_namespaced_lease, namespace,
                        body).metadata.resource_version
        except client.ApiException as race:
            if race.status == 409:
                raise TargetBusy(f"target {target_id} was just taken by another run (Lease {namespace}/{name})") \
                    from race
            raise
    spec = lease.spec
    renewed = spec.renew_time or spec.acquire_time
    expired = renewed is None or renewed + timedelta(seconds=spec.lease_duration_seconds or 0) < now
    if spec.holder_identity and spec.holder_identity != holder and not expired:
        raise TargetBusy(f"target {target_id} is held by run {spec.holder_identity!r} (Lease {namespace}/{name}, "
                         f"renewed {renewed:%H:%M:%S} UTC, for {spec.lease_duration_seconds}s): wait for it to finish, "
                         f"or {crashed_hint.format(holder=spec.holder_identity)}")
    if spec.holder_identity != holder:
        spec.lease_transitions = (spec.lease_transitions or 0) + 1
        spec.acquire_time = now
    spec.holder_identity, spec.renew_time, spec.lease_duration_seconds = holder, now, duration_s
    try:
        return call("update", "leases", namespace, coordination.replace_namespaced_lease, name, namespace,
                    lease).metadata.resource_version
    except client.ApiException as exc:
        if exc.status == 409:
            raise TargetBusy(f"target {target_id} was just taken by another run (Lease {namespace}/{name})") from exc
        raise


def release_lease(api: Any, namespace: str, name: str, holder: str) -> bool:
    """Delete the Lease if ``holder`` still holds it (never one another run took over); True if deleted."""
    from kubernetes import client

    coordination = client.CoordinationV1Api(api)
    try:
        lease = call("get", "leases", namespace, coordination.read_namespaced_lease, name, namespace)
        if lease.spec.holder_identity != holder:
            return False
        call("delete", "leases", namespace, coordination.delete_namespaced_lease, name, namespace,
             body=client.V1DeleteOptions(preconditions=client.V1Preconditions(
                 resource_version=lease.metadata.resource_version)))
        return True
    except client.ApiException as exc:
        if exc.status in (404, 409):  # gone already, or renewed by someone else in between
            return False
        raise


SERVICE_ACCOUNT_NAMESPACE = "/var/run/secrets/kubernetes.io/serviceaccount/namespace"


def lease_namespace() -> str | None:
    """Where cluster-wide locks live: ``MLCHAOS_LEASE_NAMESPACE``, else, in a pod, the pod's own namespace;
    None off-cluster (locks are then files on this machine)."""
    if os.environ.get("MLCHAOS_LEASE_NAMESPACE"):
        return os.environ["MLCHAOS_LEASE_NAMESPACE"]
    if os.environ.get("KUBERNETES_SERVICE_HOST") and os.path.exists(SERVICE_ACCOUNT_NAMESPACE):
        with open(SERVICE_ACCOUNT_NAMESPACE) as handle:
            return handle.read().strip() or None
    return None


@contextmanager
def held_lease(namespace: str, key: str, duration_s: int = 60, wait_s: float = 120) -> Iterator[str]:
    """Hold the Lease for ``key`` in ``namespace`` for the block, waiting up to ``wait_s`` while another
    holder has it (a holder that died frees it when its Lease expires, after ``duration_s``)."""
    import socket
    import time
    import uuid

    api = api_client()
    name = lease_name(key)
    holder = f"{socket.gethostname()}/{os.getpid()}/{uuid.uuid4().hex[:8]}"
    deadline = time.monotonic() + wait_s
    while True:
        try:
            acquire_lease(api, namespace, name, holder, duration_s, key,
                          crashed_hint=f"if it crashed, its Lease expires {duration_s}s after its last renewal")
            break
        except TargetBusy as busy:
            if time.monotonic() > deadline:
                raise TargetBusy(f"waited {wait_s:g}s for {key}: {busy}") from busy
            time.sleep(0.2)
    try:
        yield holder
    finally:
        release_lease(api, namespace, name, holder)
