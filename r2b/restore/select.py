"""Choosing catalog rows to restore, and keeping what is restored inside the target folder.

Pure functions over paths (no I/O), property-tested in tests/test_restore_paths.py.

Selection: each requested path is absolute in the backup (a missing leading ``/`` is added,
a trailing ``/`` dropped). A path that exists as written names that entry (``/`` all of them);
otherwise, with glob characters, it is a glob matched component by component: ``*`` and
``?`` never match ``/``, ``[...]`` is a character class (``[!...]`` negated), ``**`` as a
whole component matches any number of components. A selected directory brings everything
below it. A request matching nothing is an error (``PathNotInBackup``), so a typo is never a
silent no-op.

Containment: catalog paths become paths below the target folder component by component; a
component that is empty, ``.`` or ``..`` or holds a NUL makes the entry unsafe (it is skipped
and reported, whatever the catalog says). Symlink targets are resolved the way a chroot at the
filesystem's root would resolve them (lexically; ``..`` stops at the root; an absolute target
starts at that root) and written relative to the link: a restored link always points inside
the restored filesystem, and a benign relative target keeps its text.
"""

from __future__ import annotations

import bisect
import re
from collections.abc import Sequence

import numpy as np
import numpy.typing as npt

_GLOB_CHARS = re.compile(r"[*?\[]")


def normalize(pattern: str) -> str:
    """``etc//hosts/`` → ``/etc/hosts``; ``""`` → ``/``."""
    parts = [p for p in pattern.split("/") if p]
    return "/" + "/".join(parts)


def has_glob(pattern: str) -> bool:
    return _GLOB_CHARS.search(pattern) is not None


def glob_regex(pattern: str) -> str:
    """An anchored regular expression for a normalized glob (module docstring)."""
    out: list[str] = []
    components = pattern.split("/")[1:]
    for index, component in enumerate(components):
        last = index == len(components) - 1
        if component == "**":
            out.append("(?:/[^/]+)*" if last else "(?:/[^/]+)*?")
            continue
        out.append("/" + _component_regex(component))
    return "^" + "".join(out) + "$" if out else "^/$"


def _component_regex(component: str) -> str:
    return glob_text_regex(component, within_component=True)


def glob_text_regex(text: str, within_component: bool) -> str:
    """The (unanchored) regular expression of a glob: ``*`` a run of characters, ``?`` one,
    ``[...]`` a class (``[!...]`` negated), everything else literal. ``within_component``
    keeps all three from matching ``/`` (path globs); otherwise they match anything (item
    names). Valid for Python's ``re`` and DuckDB's RE2 alike."""
    anything = "[^/]" if within_component else "."
    out: list[str] = []
    i = 0
    while i < len(text):
        c = text[i]
        if c == "*":
            out.append(anything + "*")
        elif c == "?":
            out.append(anything)
        elif c == "[" and (end := _class_end(text, i)) > 0:
            body = text[i + 1 : end]
            negate = body.startswith("!")
            body = body[1:] if negate else body
            escaped = body.replace("\\", "\\\\").replace("^", "\\^").replace("[", "\\[")
            out.append(f"[{('^/' if within_component else '^') if negate else ''}{escaped}]")
            i = end
        else:
            out.append(re.escape(c))
        i += 1
    return "".join(out)


def _class_end(component: str, start: int) -> int:
    """Index of the ``]`` closing a class opened at ``start``, or -1 (then ``[`` is literal)."""
    i = start + 1
    if i < len(component) and component[i] == "!":
        i += 1
    if i < len(component) and component[i] == "]":
        i += 1
    end = component.find("]", i)
    return end


def select(
    paths: Sequence[str], is_dir: npt.NDArray[np.bool_], patterns: Sequence[str]
) -> tuple[npt.NDArray[np.bool_], list[str]]:
    """Rows of sorted ``paths`` the ``patterns`` select (with directories' contents), and the
    patterns that matched nothing."""
    chosen = np.zeros(len(paths), dtype=bool)
    missing: list[str] = []
    for raw in patterns:
        pattern = normalize(raw)
        hits = _matches(paths, pattern)
        if not hits:
            missing.append(pattern)
        for row in hits:
            chosen[row] = True
            if is_dir[row]:
                start, stop = subtree(paths, paths[row])
                chosen[start:stop] = True
    return chosen, missing


def _matches(paths: Sequence[str], pattern: str) -> list[int]:
    """Rows matching ``pattern``; a path that exists as written is taken literally (a file
    may well be called ``photo [1].jpg``)."""
    if pattern == "/":
        return list(range(len(paths)))
    row = bisect.bisect_left(paths, pattern)
    if row < len(paths) and paths[row] == pattern:
        return [row]
    if not has_glob(pattern):
        return []
    regex = re.compile(glob_regex(pattern), re.DOTALL)
    return [row for row, path in enumerate(paths) if regex.match(path)]


def subtree(paths: Sequence[str], directory: str) -> tuple[int, int]:
    """The row range of everything below ``directory`` in sorted ``paths``: the paths that
    start with ``directory + '/'`` sort together, before ``directory + '0'`` ('/' + 1)."""
    prefix = directory.rstrip("/") + "/"
    return bisect.bisect_left(paths, prefix), bisect.bisect_left(paths, prefix[:-1] + "0")


def safe_parts(path: str) -> tuple[str, ...] | None:
    """The components of catalog ``path`` below the target folder; None if any is unsafe."""
    parts = tuple(path.split("/")[1:])
    if not parts or not path.startswith("/"):
        return None
    for part in parts:
        if part in ("", ".", "..") or "\0" in part:
            return None
    return parts


def contained_target(link_parts: Sequence[str], fs_depth: int, target: str) -> str | None:
    """The target to give a restored symlink at ``link_parts`` whose filesystem's root is
    ``link_parts[:fs_depth]`` (module docstring); None for an empty or NUL-holding target."""
    if not target or "\0" in target:
        return None
    link_dir = list(link_parts[fs_depth:-1])
    resolved: list[str] = [] if target.startswith("/") else list(link_dir)
    for segment in target.split("/"):
        if segment in ("", "."):
            continue
        if segment == "..":
            if resolved:
                resolved.pop()
        else:
            resolved.append(segment)
    common = 0
    while common < min(len(link_dir), len(resolved)) and link_dir[common] == resolved[common]:
        common += 1
    relative = [".."] * (len(link_dir) - common) + resolved[common:]
    return "/".join(relative) or "."
