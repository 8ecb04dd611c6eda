"""The layering of DESIGN.md ("Shape of the code"), enforced.

* The core (``r2b/``) and the catalog (``catalog/``) import no Prefect, and nothing from the
  layers above them (``flows/``, ``tasks/``, ``blocks/``, ``cli/``), which import Prefect.
  Checked on the source (every import statement, parsed with ``ast``) and at run time
  (importing every core module in a fresh interpreter leaves ``prefect`` out of
  ``sys.modules``: that also catches a third-party module that pulls it in).
* ``tasks/`` holds thin tasks: a ``@task`` body is a few statements over the core.
* The CLI's read-only path (``r2b machine list``) imports no Prefect and answers quickly.
"""

from __future__ import annotations

import ast
import os
import statistics
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
CORE_PACKAGES = ("r2b", "catalog")
UPPER_LAYERS = ("flows", "tasks", "blocks", "cli")
MAX_TASK_STATEMENTS = 6
PYTHON = Path(sys.executable)
R2B = PYTHON.with_name("r2b")
CLI_MEDIAN_LIMIT_S = 2.0  # the target is < 1.5 s; the margin is for a noisy machine


@dataclass(frozen=True)
class ImportRef:
    path: Path
    line: int
    module: str

    def __str__(self) -> str:
        return f"{self.path.relative_to(ROOT)}:{self.line}: {self.module}"


def python_files(*packages: str) -> list[Path]:
    files = sorted(f for p in packages for f in (ROOT / p).rglob("*.py"))
    return [f for f in files if "__pycache__" not in f.parts]


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def parse(path: Path) -> ast.Module:
    return ast.parse(path.read_text(encoding="utf-8"), filename=str(path))


def resolve_relative(path: Path, level: int, module: str | None) -> str:
    """The absolute name of ``from {'.' * level}{module} import ...`` written in ``path``."""
    package = module_name(path).split(".")
    if path.name != "__init__.py":
        package.pop()
    base = package[: len(package) - (level - 1)] if level > 1 else package
    return ".".join([*base, *([module] if module else [])])


def imports(path: Path, tree: ast.Module | None = None) -> Iterator[ImportRef]:
    """Every module ``path`` (or ``tree``, its parsed source) imports: statements anywhere
    (also inside functions and ``if TYPE_CHECKING``), and ``importlib.import_module("...")``
    or ``__import__("...")`` with a literal name."""
    for node in ast.walk(parse(path) if tree is None else tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield ImportRef(path, node.lineno, alias.name)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = resolve_relative(path, node.level, node.module)
            else:
                base = node.module or ""
            yield ImportRef(path, node.lineno, base)
            for alias in node.names:  # ``from pkg import submodule``
                yield ImportRef(path, node.lineno, f"{base}.{alias.name}")
        elif isinstance(node, ast.Call) and node.args:
            func = node.func
            name = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", None)
            first = node.args[0]
            if (
                name in ("import_module", "__import__")
                and isinstance(first, ast.Constant)
                and isinstance(first.value, str)
            ):
                yield ImportRef(path, node.lineno, first.value)


def top(module: str) -> str:
    return module.split(".", 1)[0]


def is_prefect(module: str) -> bool:
    """``prefect`` itself or one of its integrations (``prefect_aws``, ...)."""
    return top(module) == "prefect" or top(module).startswith("prefect_")


# --- the core imports no Prefect ---------------------------------------------------------------


def test_the_checks_see_every_kind_of_import() -> None:
    """The AST walk finds what a grep for 'import prefect' would miss (and vice versa)."""
    sample = ROOT / "r2b" / "sample.py"  # a name for resolving relative imports; not read
    source = textwrap.dedent(
        """
        import os, prefect.flows as pf
        from typing import TYPE_CHECKING
        if TYPE_CHECKING:
            from prefect_aws import S3Bucket
        def lazy():
            from prefect import flow
            import importlib
            return importlib.import_module("prefect.events")
        from . import ids
        from ..flows import runtime
        # import prefect  (a comment is not an import)
        text = "import prefect"
        """
    )
    found = {(ref.line, ref.module) for ref in imports(sample, ast.parse(source))}
    assert {(2, "prefect.flows"), (5, "prefect_aws"), (7, "prefect"), (9, "prefect.events")} <= (
        found
    )
    assert (10, "r2b.ids") in found and (11, "flows.runtime") in found
    assert not any(line in (12, 13) for line, _ in found)


def test_core_and_catalog_do_not_import_prefect() -> None:
    files = python_files(*CORE_PACKAGES)
    assert len(files) > 5, "no core modules found: wrong ROOT?"
    offenders = [str(ref) for f in files for ref in imports(f) if is_prefect(ref.module)]
    assert offenders == [], "the core must not import Prefect:\n" + "\n".join(offenders)


def test_core_and_catalog_do_not_import_the_layers_above() -> None:
    offenders = [
        str(ref)
        for f in python_files(*CORE_PACKAGES)
        for ref in imports(f)
        if top(ref.module) in UPPER_LAYERS
    ]
    assert offenders == [], "the core must not import flows/tasks/blocks/cli:\n" + "\n".join(
        offenders
    )


def test_importing_every_core_module_leaves_prefect_out() -> None:
    modules = sorted(module_name(f) for f in python_files(*CORE_PACKAGES))
    script = textwrap.dedent(
        f"""
        import importlib, sys
        for name in {modules!r}:
            importlib.import_module(name)
        loaded = sorted(m for m in sys.modules if m.split(".")[0].startswith("prefect"))
        assert not loaded, f"importing the core loaded {{loaded[:10]}}"
        """
    )
    proc = subprocess.run(
        [str(PYTHON), "-c", script], cwd=ROOT, capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 0, proc.stderr[-3000:]


# --- thin tasks --------------------------------------------------------------------------------


def decorator_name(node: ast.expr) -> str:
    """``task`` for ``@task``, ``@task(...)``, ``@prefect.task``, ``@prefect.task(...)``."""
    if isinstance(node, ast.Call):
        node = node.func
    if isinstance(node, ast.Attribute):
        return node.attr
    return node.id if isinstance(node, ast.Name) else ""


def statements(body: list[ast.stmt]) -> list[ast.stmt]:
    """Every statement of a body, nested ones included, without a leading docstring."""
    if body and isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant):
        body = body[1:]
    found: list[ast.stmt] = []
    for stmt in body:
        found.extend(n for n in ast.walk(stmt) if isinstance(n, ast.stmt))
    return found


def task_functions(path: Path) -> Iterator[ast.FunctionDef | ast.AsyncFunctionDef]:
    for node in ast.walk(parse(path)):
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef) and any(
            decorator_name(d) == "task" for d in node.decorator_list
        ):
            yield node


def test_tasks_are_thin() -> None:
    files = python_files("tasks")
    tasks = [(f, fn) for f in files for fn in task_functions(f)]
    assert tasks, "no @task functions found under tasks/"
    fat = [
        f"{f.relative_to(ROOT)}:{fn.lineno}: {fn.name} has {n} statements"
        for f, fn in tasks
        if (n := len(statements(fn.body))) > MAX_TASK_STATEMENTS
    ]
    assert fat == [], (
        f"a task is a thin wrapper (at most {MAX_TASK_STATEMENTS} statements) over the core; "
        "move the logic to r2b/:\n" + "\n".join(fat)
    )
    nested = [
        f"{f.relative_to(ROOT)}:{fn.lineno}: {fn.name} defines {type(n).__name__} {n.name}"
        for f, fn in tasks
        for n in statements(fn.body)
        if isinstance(n, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef)
    ]
    assert nested == [], "tasks define no functions or classes of their own:\n" + "\n".join(nested)


def test_tasks_define_no_flows() -> None:
    flows = [
        f"{f.relative_to(ROOT)}:{node.lineno}: {node.name}"
        for f in python_files("tasks")
        for node in ast.walk(parse(f))
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef)
        and any(decorator_name(d) == "flow" for d in node.decorator_list)
    ]
    assert flows == [], "flows belong in flows/:\n" + "\n".join(flows)


# --- the CLI's read-only path ------------------------------------------------------------------


@pytest.fixture
def cli_env(tmp_path: Path) -> dict[str, str]:
    """An environment with its own R2B_HOME holding one registered machine."""
    home = tmp_path / "r2b-home"
    disk = tmp_path / "disk.img"
    with disk.open("wb") as f:
        f.truncate(1024 * 1024)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PREFECT_", "R2B_"))}
    env["R2B_HOME"] = str(home)
    register = "from r2b.ops import Settings, add_machine; add_machine(Settings.from_env(), "
    register += f"'listed', [{str(disk)!r}])"
    subprocess.run([str(PYTHON), "-c", register], cwd=ROOT, env=env, check=True, timeout=60)
    return env


def test_machine_list_imports_no_prefect(cli_env: dict[str, str]) -> None:
    script = textwrap.dedent(
        """
        import sys
        from typer.testing import CliRunner
        from cli.main import app
        result = CliRunner().invoke(app, ["--json", "machine", "list"])
        assert result.exit_code == 0, (result.output, result.exception)
        assert "listed" in result.output, result.output
        loaded = sorted(m for m in sys.modules if m.split(".")[0].startswith("prefect"))
        assert not loaded, f"r2b machine list imported {loaded[:10]}"
        """
    )
    proc = subprocess.run(
        [str(PYTHON), "-c", script], cwd=ROOT, env=cli_env, capture_output=True, text=True
    )
    assert proc.returncode == 0, proc.stderr[-3000:]


def test_machine_list_is_quick(
    cli_env: dict[str, str], record_property: Callable[[str, object], None]
) -> None:
    assert R2B.exists(), f"{R2B}: the r2b script is not installed in this environment"
    times = []
    for _ in range(3):
        start = time.perf_counter()
        proc = subprocess.run([str(R2B), "machine", "list"], env=cli_env, capture_output=True)
        times.append(time.perf_counter() - start)
        assert proc.returncode == 0, proc.stderr.decode(errors="replace")
        assert b"listed" in proc.stdout
    median = statistics.median(times)
    record_property("r2b_machine_list_median_s", round(median, 3))
    print(f"\nr2b machine list: median {median:.3f} s of {[round(t, 3) for t in times]}")
    assert median < CLI_MEDIAN_LIMIT_S, f"r2b machine list takes {median:.2f} s (target 1.5 s)"
