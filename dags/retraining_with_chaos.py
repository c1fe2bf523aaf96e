"""Retraining with chaos: prepare -> train -> checkpoint-wipe -> evaluate -> register (@challenger)
-> registry-artifact-removal -> promotion gate (@champion). Runs locally on the embedded defaults."""

from mlchaos_steps.examples.pipeline import retraining_dag

dag = retraining_dag()
