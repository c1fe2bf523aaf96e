"""Waiting until something holds, with tenacity: one helper for every wait-until loop of the package."""

from __future__ import annotations

from collections.abc import Callable

from tenacity import RetryError, Retrying, retry_if_result, stop_after_delay, wait_fixed


def wait_until(condition: Callable[[], bool], timeout_s: float, interval_s: float = 0.05) -> bool:
    """Call ``condition`` every ``interval_s`` until it returns True (then True) or ``timeout_s`` passed
    (then False). An exception from ``condition`` stops the wait and propagates."""
    try:
        Retrying(stop=stop_after_delay(timeout_s), wait=wait_fixed(interval_s),
                 retry=retry_if_result(lambda held: not held))(condition)
    except RetryError:
        return False
    return True
