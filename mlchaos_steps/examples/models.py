"""Example registered models: a real scikit-learn model, and a deliberately fragile pyfunc one.

``register_sklearn`` logs a LogisticRegression (the same 8-feature task as the example trainer).
``register_silent_fallback`` logs a pyfunc model whose ``load_context`` swallows a missing weights
file and serves default weights instead: it loads fine with its artifacts gone, which is exactly
the bug the registry-artifact-removal stage (``expect: detected``) must catch.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import mlflow.pyfunc

SAMPLE_INPUT = {"inputs": [[0.5, -0.2, 0.1, 0.0, 0.3, -0.1, 0.2, 0.0]]}
PIP_REQUIREMENTS = ["scikit-learn", "mlflow"]


def _data(n: int = 400) -> tuple[Any, Any]:
    import numpy as np

    rng = np.random.default_rng(7)
    x = rng.normal(size=(n, 8))
    return x, (x[:, 0] + 0.5 * x[:, 1] - x[:, 2] > 0).astype(int)


def register_sklearn(name: str, experiment: str = "mlchaos-examples", serialization_format: str = "cloudpickle"
                     ) -> str:
    """Train, log and register; returns the new version.

    cloudpickle rather than MLflow's default, skops: importing skops walks the attributes of every module
    loaded (3 to 4 s of CPU in each process that saves or loads the model, more in an Airflow worker),
    and MLflow 3.17 gates loading either format behind the same MLFLOW_ALLOW_PICKLE_DESERIALIZATION.
    ``serialization_format="skops"`` logs it the default way."""
    from sklearn.linear_model import LogisticRegression

    from mlchaos_steps.targets.mlflow import experiment_id, tracking_uri

    mlflow.set_tracking_uri(tracking_uri())
    x, y = _data()
    model = LogisticRegression().fit(x, y)
    with mlflow.start_run(experiment_id=experiment_id(experiment)):
        mlflow.log_metric("accuracy", float(model.score(x, y)))
        info = mlflow.sklearn.log_model(model, name="model", pip_requirements=PIP_REQUIREMENTS,
                                        registered_model_name=name, serialization_format=serialization_format)
    return str(info.registered_model_version)


class SilentFallbackModel(mlflow.pyfunc.PythonModel):  # type: ignore[misc]
    """Loads its weights, or, when they are missing, quietly serves defaults. The bug on purpose."""

    def load_context(self, context: Any) -> None:
        try:
            self.weights = json.loads(Path(context.artifacts["weights"]).read_text())
        except Exception:
            self.weights = [1.0] * 8

    def predict(self, context: Any, model_input: Any, params: Any = None) -> Any:
        import numpy as np

        return (np.asarray(model_input, dtype=float) @ np.asarray(self.weights) > 0).astype(int)


def register_silent_fallback(name: str, workdir: Path, experiment: str = "mlchaos-examples") -> str:
    from mlchaos_steps.targets.mlflow import experiment_id, tracking_uri

    mlflow.set_tracking_uri(tracking_uri())
    weights = workdir / "weights.json"
    weights.write_text(json.dumps([1.0, 0.5, -1.0, 0, 0, 0, 0, 0]))
    with mlflow.start_run(experiment_id=experiment_id(experiment)):
        info = mlflow.pyfunc.log_model(name="model", python_model=SilentFallbackModel(),
                                       artifacts={"weights": str(weights)}, pip_requirements=PIP_REQUIREMENTS,
                                       registered_model_name=name)
    return str(info.registered_model_version)
