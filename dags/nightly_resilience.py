"""Nightly resilience: every day, the stages against the current champion; each run is an MLflow run
in experiment 'mlchaos', so the trend is there."""

from mlchaos_steps.examples.pipeline import nightly_dag

dag = nightly_dag()
