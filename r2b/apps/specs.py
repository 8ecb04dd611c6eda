"""Application specs as the CLI takes them: ``KIND:TARGET``."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from r2b.errors import BadInput

AppKind = Literal["postgres", "sqlite", "maildir", "mbox"]
KINDS: tuple[AppKind, ...] = ("postgres", "sqlite", "maildir", "mbox")


@dataclass(frozen=True)
class AppSpec:
    kind: AppKind
    target: str  # a libpq connection string, or a path as the machine sees it

    def __str__(self) -> str:
        return f"{self.kind}:{self.target}"


def parse_app(text: str) -> AppSpec:
    kind, sep, target = text.partition(":")
    if not sep or not target.strip():
        raise BadInput(
            f"invalid --app {text!r}: use postgres:CONNINFO, sqlite:PATH, maildir:PATH or mbox:PATH"
        )
    for known in KINDS:
        if kind == known:
            if known != "postgres" and not target.startswith("/"):
                raise BadInput(f"invalid --app {text!r}: the path must be absolute")
            return AppSpec(known, target)
    raise BadInput(
        f"unknown application kind {kind!r} in --app {text!r}: use one of " + ", ".join(KINDS)
    )
