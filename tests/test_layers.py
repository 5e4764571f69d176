"""The package's shape: imports follow the data flow (DESIGN.md's layers), with no cycles;
analyses keep to themselves and to the store; the CLI uses only the public API."""

from __future__ import annotations

import ast
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1] / "saedata"

LAYER = {  # room (first name under saedata/) -> layer; an import may only point to a lower layer or its own room
    "config": 0, "errors": 0, "console": 0,
    "corpus": 1, "reader": 1, "sae": 1, "store": 1, "demo": 1,
    "label": 2,
    "embed": 3, "analysis": 3,
    "reports": 4, "vae": 4,
    "__init__": 5,
    "cli": 6,
}
PUBLIC_FOR_CLI = {"saedata", "saedata.config", "saedata.errors", "saedata.console", "saedata.demo"}
"""What the CLI may import from the library: the API (``import saedata``), the layer-0 modules and
the planted demo corpora."""
ANALYSIS_HELPERS = {"scope", "stats", "words", "axes", "presence", "findings"}
"""The analysis room's shared modules; the analyses themselves import only these (and the store).
(``findings`` groups a diff's latents: a function of counts that reads no store.)"""


def _modules() -> dict[str, Path]:
    mods = {}
    for p in ROOT.rglob("*.py"):
        rel = p.relative_to(ROOT).with_suffix("")
        mods[".".join(("saedata",) + rel.parts).removesuffix(".__init__")] = p
    return mods


MODULES = _modules()


def _imports(name: str, path: Path) -> list[tuple[str, str]]:
    """(module imported, name imported or '') for every saedata import in a module, lazy ones included."""
    pkg = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
    out = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            out += [(a.name, "") for a in node.names if a.name.startswith("saedata")]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = pkg.split(".")[: len(pkg.split(".")) - node.level + 1]
                base = ".".join(parts + ([base] if base else []))
            if base.startswith("saedata"):
                for a in node.names:
                    full = f"{base}.{a.name}"
                    out.append((full, "") if full in MODULES else (base, a.name))
    return [(m, n) for m, n in out if m != name]


def _room(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "__init__"


def _graph() -> dict[str, set[str]]:
    return {m: {d for d, _ in _imports(m, p) if d in MODULES} for m, p in MODULES.items()}


def test_every_room_is_on_the_design():
    assert {_room(m) for m in MODULES} <= set(LAYER), "a module outside DESIGN.md's rooms"


def test_imports_have_no_cycles():
    graph = _graph()
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    cycles: list[list[str]] = []

    def visit(v: str) -> None:  # Tarjan's strongly connected components
        index[v] = low[v] = len(index)
        stack.append(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                cycles.append(sorted(comp))

    sys.setrecursionlimit(10_000)
    for v in graph:
        if v not in index:
            visit(v)
    assert cycles == []


def test_imports_follow_the_layers():
    against = []
    for module, deps in _graph().items():
        for dep in deps:
            room, dep_room = _room(module), _room(dep)
            if room == dep_room:
                continue
            if LAYER[dep_room] > LAYER[room] or LAYER[dep_room] == LAYER[room] == 3:
                against.append(f"{module} -> {dep}")
    assert against == [], "imports against the layers (embed and analysis never import each other)"


def test_analyses_import_no_other_analysis_and_no_private_names():
    bad = []
    for module, path in MODULES.items():
        if not module.startswith("saedata.analysis."):
            continue
        for dep, name in _imports(module, path):
            if dep.startswith("saedata.analysis.") and dep.split(".")[2] not in ANALYSIS_HELPERS:
                bad.append(f"{module} imports {dep}")
            if name.startswith("_"):
                bad.append(f"{module} imports the private {dep}.{name}")
    assert bad == []


SQL = re.compile(r"\bSELECT\b.*\bFROM\b|\bINSERT INTO\b|\bUPDATE \w+ SET\b|\bDELETE FROM\b"
                 r"|\bCREATE (OR|TABLE|VIEW|TEMP)\b", re.DOTALL)


def _docstrings(tree: ast.AST) -> set[int]:
    ids = set()
    for node in ast.walk(tree):
        body = getattr(node, "body", None)
        if isinstance(body, list) and body and isinstance(body[0], ast.Expr) \
                and isinstance(body[0].value, ast.Constant):
            ids.add(id(body[0].value))
    return ids


def test_analyses_hold_no_sql():
    """Analyses call macros (queries/*.sql) and Store methods; they write no SQL themselves."""
    found = []
    for module, path in MODULES.items():
        if not module.startswith("saedata.analysis."):
            continue
        tree = ast.parse(path.read_text(encoding="utf-8"))
        docs = _docstrings(tree)
        for node in ast.walk(tree):
            if isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in docs \
                    and SQL.search(node.value):
                found.append(f"{module}:{node.lineno}: {node.value[:60]!r}")
    assert found == []


def test_the_cli_uses_only_the_public_api():
    bad = []
    for module, path in MODULES.items():
        if _room(module) != "cli":
            continue
        for dep, _name in _imports(module, path):
            if _room(dep) != "cli" and dep not in PUBLIC_FOR_CLI:
                bad.append(f"{module} imports {dep}")
    assert bad == []


@pytest.mark.parametrize("statement", [
    "import saedata",
    "import saedata.cli",
    "from saedata.cli import main; main(['--help'], standalone_mode=False)",
])
def test_importing_the_api_or_the_cli_loads_no_torch(statement):
    code = f"import sys\n{statement}\nprint(sorted(m for m in ('torch', 'transformers', 'umap') if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip().splitlines()[-1] == "[]"


def test_api_names_stay_callable_after_their_modules_load():
    """``saedata.embed`` is both a package and the function that embeds: importing a
    submodule (which rebinds the name on the package) must not break the call."""
    code = ("import saedata\nf = saedata.embed\nimport saedata.embed.local, saedata.embed.ray, saedata.store\n"
            "import saedata.embed.train\nassert callable(saedata.embed) and callable(f)\n"
            "assert callable(saedata.train) and callable(saedata.open) and callable(saedata.diff)\n"
            "print(saedata.embed.__name__)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "saedata.embed"


def test_every_public_name_resolves():
    import saedata

    missing = [n for n in saedata.__all__ if getattr(saedata, n, None) is None]
    assert missing == []
