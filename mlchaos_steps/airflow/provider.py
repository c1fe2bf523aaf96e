"""Provider metadata, found through the ``apache_airflow_provider`` entry point."""

from __future__ import annotations

from typing import Any

from mlchaos_steps import __version__


def get_provider_info() -> dict[str, Any]:
    return {
        "package-name": "mlchaos-steps",
        "name": "mlchaos-steps",
        "description": "Chaos stages for ML pipelines, with verdicts on MLflow model versions and a promotion gate.",
        "versions": [__version__],
        "connection-types": [
            {"connection-type": "mlflow", "hook-class-name": "mlchaos_steps.airflow.hooks.MlflowHook"},
        ],
        "extra-links": ["mlchaos_steps.airflow.operators.MlflowRunLink",
                        "mlchaos_steps.airflow.operators.ScorecardLink"],
    }
