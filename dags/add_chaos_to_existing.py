"""Chaos in a DAG defined elsewhere, without editing it: insert_chaos between train and evaluate."""

from mlchaos_steps.airflow import insert_chaos
from mlchaos_steps.examples.pipeline import checkpoint_wipe_spec, plain_training_dag

dag = plain_training_dag("existing_training_with_chaos")
insert_chaos(dag, after="train", before="evaluate", stage=checkpoint_wipe_spec("existing_training_with_chaos"))
