"""How the CLI ends a flow run it started that did not complete: one line, and exit code 2 for a refusal.

A *refusal* is a run that stopped on its input or its target before writing anything, or because
another writer holds the target: bad parameters or source, a foreign or unsafe target, ``TargetBusy``
(the core raises ``ValueError``/``TypeError`` subclasses for all of them). An outage
(``ObjectStoreUnavailable``) or a lost lease is a failure of a run under way (exit code 1), as is
any other exception. Prefect logs a failed run's exception with its traceback on the console; for a
refusal that traceback says nothing the line does not, so the console shows the line alone (the
traceback still reaches the API's logs, for the UI).
"""

from __future__ import annotations

import copy
import logging
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from topozarr_core.store.errors import redact
from topozarr_core.store.lease import LeaseLost
from topozarr_core.store.retrying_store import ObjectStoreUnavailable

#: Exit code of a refused run (as for invalid parameters); a run that failed under way exits with 1.
EXIT_REFUSED = 2
EXIT_FAILED = 1


def is_refusal(err: BaseException | None) -> bool:
    """Whether ``err`` ended a run before it wrote anything (see the module docstring)."""
    return isinstance(err, (ValueError, TypeError)) and not isinstance(err, (ObjectStoreUnavailable, LeaseLost))


def failure_line(state: Any) -> str:
    """One line for a run's final state: ``<ExceptionType>: <message>`` (credentials redacted)."""
    err = state.result(raise_on_failure=False)
    text = f"{type(err).__name__}: {err}" if isinstance(err, BaseException) else (state.message or state.name)
    return redact(" ".join(str(text).split()))


def settle_logs(timeout: float = 5.0) -> None:
    """Let Prefect send what the run logged (its workers warn at exit otherwise, after the line).

    :param timeout: seconds to wait for each of the log and event workers.
    """
    from prefect.events.worker import EventsWorker
    from prefect.logging.handlers import APILogWorker

    APILogWorker.drain_all(timeout=timeout)
    EventsWorker.drain_all(timeout=timeout)


def exit_code(state: Any) -> int:
    """0 for a completed run, :data:`EXIT_REFUSED` for a refusal, else :data:`EXIT_FAILED`.

    :param state: the run's final state.
    """
    if state.is_completed():
        return 0
    return EXIT_REFUSED if is_refusal(state.result(raise_on_failure=False)) else EXIT_FAILED


class _WithoutRefusalTraceback(logging.Filter):
    """Console records of a refusal without their traceback (a copy: the API's handler keeps it)."""

    def filter(self, record: logging.LogRecord) -> bool | logging.LogRecord:
        err = record.exc_info[1] if record.exc_info else None
        if not is_refusal(err):
            return True
        quiet = copy.copy(record)
        quiet.exc_info, quiet.exc_text = None, None
        return quiet


@contextmanager
def refusals_without_tracebacks() -> Iterator[None]:
    """While the block runs, console handlers print refusals without their tracebacks."""
    from prefect.logging.handlers import PrefectConsoleHandler

    quiet = _WithoutRefusalTraceback()
    handlers = [h for h in logging.getLogger().handlers if isinstance(h, PrefectConsoleHandler)]
    for handler in handlers:
        handler.addFilter(quiet)
    try:
        yield
    finally:
        for handler in handlers:
            handler.removeFilter(quiet)


__all__ = ["is_refusal", "failure_line", "exit_code", "settle_logs", "refusals_without_tracebacks", "EXIT_REFUSED",
           "EXIT_FAILED"]
