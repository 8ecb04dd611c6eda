"""How the CLI speaks: one JSON document on stdout with --json, tables otherwise; progress,
logs and errors on stderr."""

from __future__ import annotations

import json
import sys
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from rich.console import Console
from rich.progress import (
    BarColumn,
    DownloadColumn,
    Progress,
    TimeRemainingColumn,
    TransferSpeedColumn,
)
from rich.table import Table


@dataclass
class Output:
    json_mode: bool = False
    verbose: bool = False

    @property
    def err(self) -> Console:
        return Console(stderr=True)

    def document(self, doc: Any, human: str | None = None) -> None:
        """Print the result: the JSON document, or the human text (a table, a line)."""
        if self.json_mode:
            sys.stdout.write(json.dumps(doc, indent=2, default=str) + "\n")
        elif human is not None:
            _stdout().print(human, highlight=False)

    def table(self, doc: Any, rows: Sequence[dict[str, Any]], columns: Sequence[str]) -> None:
        if self.json_mode:
            self.document(doc)
            return
        table = Table(*columns)
        for row in rows:
            table.add_row(*(_cell(row.get(c)) for c in columns))
        _stdout().print(table)

    def say(self, text: str) -> None:
        """A note for a person (stderr, not in --json mode)."""
        if not self.json_mode:
            self.err.print(text, highlight=False)

    @contextmanager
    def progress(self, label: str, total: int | None) -> Iterator[Any]:
        """A byte progress bar on stderr; a no-op callable when not on a terminal or --json."""
        if self.json_mode or not sys.stderr.isatty():
            yield lambda n: None
            return
        columns = (BarColumn(), DownloadColumn(), TransferSpeedColumn(), TimeRemainingColumn())
        with Progress(f"[bold]{label}", *columns, console=self.err, transient=True) as bar:
            task_id = bar.add_task(label, total=total)
            yield lambda n: bar.advance(task_id, n)


def _stdout() -> Console:
    # Scripts and pipes get whole lines, not a table cut to 80 columns.
    return Console() if sys.stdout.isatty() else Console(width=240, soft_wrap=True)


def _cell(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, list):
        return ", ".join(str(v) for v in value)
    return str(value)
