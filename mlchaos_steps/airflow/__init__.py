"""The Airflow front door: ChaosStage, the operators, insert_chaos.

Importing this module imports neither mlflow, kubernetes, chaoslib nor hera: DAG files parse fast.
Those load inside ``execute``.

Example::

    from mlchaos_steps.airflow import ChaosStage, PromotionGateOperator, insert_chaos
"""

from mlchaos_steps.airflow.insertion import insert_chaos
from mlchaos_steps.airflow.operators import (
    ChaosPhaseOperator,
    ChaosVerifyOperator,
    MlflowRunLink,
    PromotionGateOperator,
    carry_verdicts,
)
from mlchaos_steps.airflow.task_group import ChaosStage

__all__ = [
    "ChaosPhaseOperator",
    "ChaosStage",
    "ChaosVerifyOperator",
    "MlflowRunLink",
    "PromotionGateOperator",
    "carry_verdicts",
    "insert_chaos",
]
