"""The layers run one way (training -> export -> service -> bot | demo) and no module imports
itself back through others: read from the source, every import counted, function-level ones too."""

from __future__ import annotations

import ast
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
# Each package, and the first-party packages it may import (its own included).
MAY_IMPORT = {
    "training": {"training"},
    "export": {"training", "export"},
    "service": {"training", "export", "service"},
    "bot": {"training", "export", "service", "bot"},
    "demo": {"training", "export", "service", "demo"},
}
# The one import against the flow, which the design allows: the evaluation tool judges a
# deployed .onnx model with export's Classifier, loaded inside the function that needs it.
ALLOWED_UPWARD = {("training.evaluate", "export.runtime")}


def modules() -> dict[str, Path]:
    found = {}
    for package in MAY_IMPORT:
        for path in sorted((REPO / package).rglob("*.py")):
            parts = path.relative_to(REPO).with_suffix("").parts
            found[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return found


def imports(name: str, path: Path) -> list[tuple[str, bool]]:
    """(imported module, at module level?) for every first-party import in the file."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    top = {id(node) for node in tree.body} | {id(n) for node in tree.body if isinstance(node, ast.If) for n in node.body}
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join(package.split(".")[: len(package.split(".")) - node.level + 1] + ([base] if base else []))
            targets = [base] + [f"{base}.{alias.name}" for alias in node.names]
        else:
            continue
        out += [(t, id(node) in top) for t in targets if t.split(".")[0] in MAY_IMPORT]
    return out


def test_every_layer_imports_only_downward():
    known = modules()
    upward = []
    for name, path in known.items():
        for target, _ in imports(name, path):
            allowed = any(name == src and (target == dst or target.startswith(dst + ".")) for src, dst in ALLOWED_UPWARD)
            if target.split(".")[0] not in MAY_IMPORT[name.split(".")[0]] and not allowed:
                upward.append(f"{name} -> {target}")
    assert upward == [], "imports against the layers: " + ", ".join(sorted(set(upward)))


def test_no_import_cycles_at_module_level():
    known = modules()

    def module_of(target: str) -> str | None:  # "pkg.mod.Name" -> "pkg.mod"
        while target and target not in known:
            target = target.rpartition(".")[0]
        return target or None

    graph = {}
    for name, path in known.items():
        # A module importing its own package (whose __init__ re-exports it) is not a cycle.
        graph[name] = {m for t, top in imports(name, path) if top and (m := module_of(t)) and m != name
                       and not name.startswith(m + ".")}
    cycles: list[str] = []

    def visit(node: str, stack: list[str], done: set[str]) -> None:
        if node in stack:
            cycles.append(" -> ".join(stack[stack.index(node):] + [node]))
            return
        if node not in done:
            for nxt in sorted(graph[node]):
                visit(nxt, stack + [node], done)
            done.add(node)

    finished: set[str] = set()
    for name in sorted(graph):
        visit(name, [], finished)
    assert cycles == [], "import cycles: " + "; ".join(cycles)
