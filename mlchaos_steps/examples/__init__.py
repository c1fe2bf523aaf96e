"""Example workloads used by the demo and the tests: a checkpointing trainer and model servers."""
