"""A DAG file as the scheduler parses it: ``python benchmarks/parse_dag.py N`` builds a 6-task DAG with N
chaos stages (0..4). It prints the task count, the milliseconds from after ``airflow.sdk`` was imported
(the interpreter and Airflow cost the same either way) to the end of the file, importing
``mlchaos_steps.airflow`` included, and which heavy modules got imported (none may be)."""

from __future__ import annotations

import sys

stages = int(sys.argv[1]) if len(sys.argv) > 1 else 4

import time  # noqa: E402

from airflow.providers.standard.operators.empty import EmptyOperator  # noqa: E402
from airflow.sdk import DAG  # noqa: E402

started = time.perf_counter()

STAGE_DOCS = [
    {"kind": "CheckpointWipe", "spec": {"store": "file:///data/ckpts", "resume": {
        "command": ["python", "train.py", "--resume"], "max_lost_steps": 200}}},
    {"kind": "PodDelete", "spec": {"target": {"local": {"selector": {"env": {"MLCHAOS_APP": "serving"}}}},
                                   "count": 1}},
    {"kind": "RegistryArtifactRemoval", "spec": {"model": "churn", "version": "@challenger"}},
    {"kind": "CanaryFailure", "spec": {"model": "churn", "candidate": "@challenger",
                                       "router": {"url": "http://127.0.0.1:8080"}, "traffic": {"sample": {}}}},
]

with DAG("parse_benchmark", schedule=None) as dag:
    tasks = [EmptyOperator(task_id=f"t{i}") for i in range(6)]
    for a, b in zip(tasks, tasks[1:], strict=False):
        a >> b
    if stages:
        from mlchaos_steps.airflow import ChaosStage

        previous = tasks[-1]
        for doc in STAGE_DOCS[:stages]:
            stage = ChaosStage(doc)
            previous >> stage
            previous = stage

heavy = [m for m in ("mlflow", "kubernetes", "chaoslib", "hera") if m in sys.modules]
print(len(dag.task_dict), round((time.perf_counter() - started) * 1000, 3), ",".join(heavy) or "-")
