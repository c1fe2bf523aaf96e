"""``canary-failure`` on Kubernetes: the rollout's state read from the cluster instead of the router.

Two kinds of canary:

- an Argo Rollouts ``Rollout`` (``rollout: NAME``): aborted when ``status.abort`` is true; the canary's
  weight is ``status.canary.weights.canary.weight`` (traffic-routed canaries), else the share of Ready
  pods of the canary's pod-template hash (``status.currentPodHash``, when it is not ``status.stableRS``);
- a stable/canary Deployment pair (``canary_deployment: NAME``): the user's rollback scales the canary
  Deployment to zero; aborted once ``spec.replicas`` is 0 and none of its pods is left. Its "weight" is
  the number of canary pods still there.

The cluster's word is the rollout's claim about itself; the verdict still rests on the traffic: who
served each request the stage sent, before and after the abort it saw (see canary_failure.py).
"""

from __future__ import annotations

from typing import Any

from pydantic import Field, model_validator

from mlchaos_steps.core.spec import StrictModel
from mlchaos_steps.errors import InfrastructureError, SpecError
from mlchaos_steps.targets import kubernetes as kube

ROLLOUTS = ("argoproj.io", "v1alpha1", "rollouts")
FIELD = "spec.rollout.kubernetes"


class KubernetesRollout(StrictModel):
    namespace: str = Field(min_length=1)
    rollout: str | None = Field(default=None, description="an Argo Rollouts Rollout")
    canary_deployment: str | None = Field(default=None, description="the canary Deployment of a stable/canary "
                                                                    "pair: the rollback scales it to zero")
    kubeconfig: str | None = None
    context: str | None = None
    route_lag_s: float = Field(default=1.0, ge=0, le=30, description=(
        "after the abort, requests may still reach the canary's pods this long (Service endpoints being "
        "updated); later ones served by the canary fail the stage"))

    @model_validator(mode="after")
    def _one_kind(self) -> KubernetesRollout:
        if (self.rollout is None) == (self.canary_deployment is None):
            raise ValueError("give exactly one of rollout (an Argo Rollouts Rollout) and canary_deployment")
        if self.namespace in kube.PROTECTED_NAMESPACES:
            raise ValueError(f"namespace {self.namespace!r} is protected: chaos never runs in "
                             f"{', '.join(sorted(kube.PROTECTED_NAMESPACES))}")
        return self


class RolloutSource(StrictModel):
    """Where the rollout's state is read; without it, the router's ``/mlchaos/state``."""

    kubernetes: KubernetesRollout


def needs(target: KubernetesRollout) -> list[tuple[str, str]]:
    """What the stage reads: docker/k8s/rbac.yaml grants these."""
    kind = ("get", "rollouts") if target.rollout else ("get", "deployments")
    return [("get", "namespaces"), kind, ("list", "pods")]


def preflight(target: KubernetesRollout) -> None:
    """Before the fault: the namespace is not protected and the credentials may read what they must."""
    from kubernetes import client

    api = kube.api_client(target.kubeconfig, target.context)
    kube.require(api, target.namespace, needs(target))
    kube.check_namespace(client.CoreV1Api(api), target.namespace, field=f"{FIELD}.namespace")


def state(target: KubernetesRollout, api: Any = None) -> dict[str, Any]:
    """``phase`` (Progressing | Aborted | what the object says), ``canary_weight``, ``aborted_at`` (the
    cluster's own time of the abort, whole seconds, when it records one) and ``source``."""
    api = api or kube.api_client(target.kubeconfig, target.context)
    if target.rollout:
        return _rollout_state(target, api)
    return _pair_state(target, api)


def _rollout_state(target: KubernetesRollout, api: Any) -> dict[str, Any]:
    from kubernetes import client

    custom = client.CustomObjectsApi(api)
    try:
        rollout = kube.call("get", "rollouts", target.namespace, custom.get_namespaced_custom_object, *ROLLOUTS[:2],
                            target.namespace, ROLLOUTS[2], target.rollout)
    except client.ApiException as exc:
        if exc.status == 404:
            raise SpecError(f"{FIELD}.rollout", f"no Rollout {target.rollout!r} in namespace {target.namespace} (or "
                                                "the Argo Rollouts CRD is not installed): name one") from exc
        raise
    status = rollout.get("status") or {}
    weights = (status.get("canary") or {}).get("weights") or {}
    weight = (weights.get("canary") or {}).get("weight")
    if weight is None:
        weight = _canary_pod_share(target, api, rollout)
    phase = "Aborted" if status.get("abort") else str(status.get("phase") or "Progressing")
    if phase == "Paused":  # a canary step waiting: still in progress
        phase = "Progressing"
    return {"phase": phase, "canary_weight": float(weight), "aborted_at": status.get("abortedAt"),
            "message": status.get("message"), "source": f"Rollout {target.namespace}/{target.rollout}"}


def _canary_pod_share(target: KubernetesRollout, api: Any, rollout: dict[str, Any]) -> float:
    """Without traffic routing, a Rollout's canary takes the share of Ready pods its ReplicaSet has."""
    status = rollout.get("status") or {}
    canary_hash, stable_hash = status.get("currentPodHash"), status.get("stableRS")
    if not canary_hash or canary_hash == stable_hash:
        return 0.0
    selector = ",".join(f"{k}={v}" for k, v in (rollout["spec"]["selector"].get("matchLabels") or {}).items())
    from kubernetes import client

    pods = kube.list_pods_raw(client.CoreV1Api(api), target.namespace, selector)["items"]
    ready = [p for p in pods if kube.is_ready_raw(p)]
    canary = [p for p in ready if (p["metadata"].get("labels") or {}).get("rollouts-pod-template-hash") == canary_hash]
    return round(100.0 * len(canary) / len(ready), 2) if ready else 0.0


def _pair_state(target: KubernetesRollout, api: Any) -> dict[str, Any]:
    from kubernetes import client

    apps = client.AppsV1Api(api)
    try:
        deployment = kube.call("get", "deployments", target.namespace, apps.read_namespaced_deployment,
                               target.canary_deployment, target.namespace, _preload_content=False)
    except client.ApiException as exc:
        if exc.status == 404:
            raise SpecError(f"{FIELD}.canary_deployment", f"no Deployment {target.canary_deployment!r} in "
                                                          f"namespace {target.namespace}: name the canary's") from exc
        raise
    import json

    deployment = json.loads(deployment.data)
    labels = (deployment["spec"].get("selector") or {}).get("matchLabels") or {}
    if not labels:
        raise InfrastructureError(f"Deployment {target.canary_deployment} selects its pods by expressions only: "
                                  "give it matchLabels")
    selector = ",".join(f"{k}={v}" for k, v in labels.items())
    pods = [p for p in kube.list_pods_raw(client.CoreV1Api(api), target.namespace, selector)["items"]]
    replicas = int(deployment["spec"].get("replicas", 1))
    aborted = replicas == 0 and not pods  # scaled to zero, and every canary pod gone
    return {"phase": "Aborted" if aborted else "Progressing", "canary_weight": float(len(pods)),
            "aborted_at": None, "replicas": replicas, "canary_pods": len(pods),
            "source": f"Deployment {target.namespace}/{target.canary_deployment}"}
