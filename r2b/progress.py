"""Progress of long work, reported to whoever is listening (the CLI's bars), or to nobody.

Core code opens ``progress(label, total)`` around long work and calls the returned function
with the bytes done; a front end installs a reporter with ``reporting(reporter)``. A context
variable carries it, so no progress parameter threads through every layer.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from contextvars import ContextVar

Advance = Callable[[int], None]
Reporter = Callable[[str, int | None], AbstractContextManager[Advance]]

_reporter: ContextVar[Reporter | None] = ContextVar("r2b_progress_reporter", default=None)


def _ignore(_: int) -> None:
    pass


@contextmanager
def progress(label: str, total: int | None) -> Iterator[Advance]:
    reporter = _reporter.get()
    if reporter is None:
        yield _ignore
        return
    with reporter(label, total) as advance:
        yield advance


@contextmanager
def reporting(reporter: Reporter) -> Iterator[None]:
    token = _reporter.set(reporter)
    try:
        yield
    finally:
        _reporter.reset(token)
