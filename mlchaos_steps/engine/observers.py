"""The engine's observers (see :mod:`mlchaos_steps.core.observers`, where they live so that observers
in lower layers, like telemetry's, can build on them)."""

from __future__ import annotations

from mlchaos_steps.core.observers import Observer, Observers, SilentObserver

__all__ = ["Observer", "Observers", "SilentObserver"]
