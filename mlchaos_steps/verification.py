"""Reusable verification probes: model loads, serving healthy, metric threshold, alias unchanged.

Each returns a :class:`ProbeResult`; any exception inside a probe makes it unhealthy, never a pass.

Example::

    from mlchaos_steps.verification import model_loads, serving_healthy
    assert model_loads("models:/churn@champion").ok
    assert serving_healthy("http://127.0.0.1:5001", {"inputs": [[0.1, 0.2, 0.3, 0.4]]}).ok
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass
from typing import Any


@dataclass(frozen=True)
class ProbeResult:
    name: str
    ok: bool
    detail: str
    seconds: float

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def _timed(name: str, check: Any) -> ProbeResult:
    started = time.perf_counter()
    try:
        ok, detail = check()
    except Exception as exc:  # any exception is unhealthy
        ok, detail = False, f"{type(exc).__name__}: {str(exc)[:500]}"
    return ProbeResult(name, bool(ok), detail, round(time.perf_counter() - started, 4))


def model_loads(model_uri: str) -> ProbeResult:
    """Load the model with ``mlflow.pyfunc.load_model``; passes when it loads."""

    def check() -> tuple[bool, str]:
        import mlflow.pyfunc

        from mlchaos_steps.targets.mlflow import tracking_uri

        mlflow.set_tracking_uri(tracking_uri())
        model = mlflow.pyfunc.load_model(model_uri)
        return True, f"{model_uri} loaded ({type(model).__name__})"

    return _timed(f"model-loads {model_uri}", check)


def serving_healthy(base_url: str, sample: dict[str, Any] | None = None, timeout_s: float = 5.0) -> ProbeResult:
    """``/ping`` answers 200 and, with a sample, one real ``/invocations`` request answers 200."""
    from mlchaos_steps.core.probes import http_request

    def check() -> tuple[bool, str]:
        status, _, _ = http_request(base_url.rstrip("/") + "/ping", timeout_s)
        if status != 200:
            return False, f"/ping answered {status}"
        if sample is None:
            return True, "/ping answered 200"
        status, body, _ = http_request(base_url.rstrip("/") + "/invocations", timeout_s, "POST",
                                       json.dumps(sample).encode(), {"Content-Type": "application/json"})
        if status != 200:
            return False, f"/invocations answered {status}: {body[:200]!r}"
        return True, f"/ping and /invocations answered 200 ({body[:100]!r})"

    return _timed(f"serving-healthy {base_url}", check)


def metric_threshold(name: str, version: str, metric: str, threshold: float, greater_is_better: bool = True
                     ) -> ProbeResult:
    """The metric logged on the version's run meets the threshold (``mlflow.validate_evaluation_results``)."""

    def check() -> tuple[bool, str]:
        from mlflow.models import MetricThreshold
        from mlflow.models.evaluation import EvaluationResult
        from mlflow.models.evaluation.validation import ModelValidationFailedException

        from mlchaos_steps.targets.mlflow import client

        mv = client().get_model_version(name, version)
        metrics = client().get_run(mv.run_id).data.metrics
        if metric not in metrics:
            return False, f"run {mv.run_id} has no metric {metric!r}"
        result = EvaluationResult(metrics={metric: metrics[metric]}, artifacts={})
        import mlflow

        try:
            mlflow.validate_evaluation_results(
                {metric: MetricThreshold(threshold=threshold, greater_is_better=greater_is_better)}, result)
        except ModelValidationFailedException as exc:
            return False, str(exc)[:500]
        return True, f"{metric}={metrics[metric]:g} meets {threshold:g}"

    return _timed(f"metric-threshold {metric}", check)


def alias_unchanged(name: str, alias: str, expected_version: str | None) -> ProbeResult:
    """The alias still points where it pointed before the fault."""

    def check() -> tuple[bool, str]:
        from mlchaos_steps.targets.mlflow import alias_version

        now = alias_version(name, alias)
        return now == expected_version, f"@{alias} -> {now} (was {expected_version})"

    return _timed(f"alias-unchanged {alias}", check)
