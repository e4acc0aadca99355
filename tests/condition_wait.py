"""Waiting on a condition with a deadline (tenacity polls), the tests' one way to wait for something to happen."""

from __future__ import annotations

from collections.abc import Callable
from typing import TypeVar

from tenacity import (
    RetryCallState,
    Retrying,
    retry_if_exception_type,
    retry_if_result,
    stop_after_delay,
    wait_fixed,
)

T = TypeVar("T")


def wait_until(check: Callable[[], T], timeout_s: float, what: str, step_s: float = 0.2) -> T:
    """Call `check` until it returns something truthy (returned), or fail with AssertionError after `timeout_s`."""

    def timed_out(state: RetryCallState) -> T:
        raise AssertionError(f"timed out after {timeout_s:.0f} s waiting for {what}")

    retrying = Retrying(stop=stop_after_delay(timeout_s), wait=wait_fixed(step_s),
                        retry=retry_if_result(lambda result: not result), retry_error_callback=timed_out)
    return retrying(check)


def wait_for(what: str, check: Callable[[], T], timeout_s: float = 60.0, every_s: float = 0.2) -> T:
    """`wait_until` with the description first (the argument order of the stage helpers' callers)."""
    return wait_until(check, timeout_s, what, every_s)


def retry_while_raising(call: Callable[[], T], errors: type[BaseException] | tuple[type[BaseException], ...],
                        timeout_s: float, step_s: float = 0.2) -> T:
    """Call `call` until it stops raising one of `errors`; after `timeout_s` the last such error is re-raised."""
    retrying = Retrying(stop=stop_after_delay(timeout_s), wait=wait_fixed(step_s),
                        retry=retry_if_exception_type(errors), reraise=True)
    return retrying(call)
