"""Verdict tags on MLflow model versions, and the promotion gate that reads them."""

from mlchaos_steps.gate.promotion import GateDecision, decide, promote

__all__ = ["GateDecision", "decide", "promote"]
