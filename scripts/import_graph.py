"""The import graph of core/, variants/ and pipelines/, from the source (ast), without importing it.

    python scripts/import_graph.py

Prints one `a -> b` line per edge between the project's modules (imports inside functions count:
they are dependencies too), then every layer violation and import cycle on stderr, and exits 1 if
there is any. The layers: core <- variants <- pipelines, and only pipelines may import Ray or
MLflow. tests/test_architecture.py runs the same analysis.
"""
from __future__ import annotations

import argparse
import ast
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
PACKAGES = ("core", "variants", "pipelines")
# What each layer may not import: project layers above it, and the frameworks only pipelines use.
FORBIDDEN = {
    "core": {"variants", "pipelines", "ray", "mlflow"},
    "variants": {"pipelines", "ray", "mlflow"},
    "pipelines": set(),
}


def module_files(root: Path = REPO) -> dict[str, Path]:
    """Module name -> file, for every .py file of the project's packages."""
    found = {}
    for package in PACKAGES:
        for path in sorted((root / package).rglob("*.py")):
            parts = list(path.relative_to(root).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts.pop()
            found[".".join(parts)] = path
    return found


def _type_checking_only(tree: ast.AST) -> set[ast.AST]:
    """Import nodes under `if TYPE_CHECKING:`: annotations only, never run."""
    skipped = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            for child in node.body:
                skipped |= set(ast.walk(child))
    return skipped


def _imports(tree: ast.AST, module: str, is_package: bool) -> list[tuple[str, ...]]:
    """Per imported name, the dotted names it may be, most specific first (`from a import b`:
    module `a.b` if there is one, else `a`)."""
    skipped = _type_checking_only(tree)
    found: list[tuple[str, ...]] = []
    for node in ast.walk(tree):
        if node in skipped:
            continue
        if isinstance(node, ast.Import):
            found += [(alias.name,) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:  # relative: resolve against this module's package
                base = module.split(".") if is_package else module.split(".")[:-1]
                base = base[:len(base) - (node.level - 1)]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            found += [(f"{target}.{alias.name}", target) for alias in node.names]
    return found


def import_graph(root: Path = REPO) -> tuple[dict[str, set[str]], dict[str, set[str]]]:
    """(edges between project modules, top-level external packages each module imports).
    Importing `a.b` runs `a/__init__.py` too; that implicit step is not drawn as an edge."""
    files = module_files(root)
    edges: dict[str, set[str]] = {m: set() for m in files}
    external: dict[str, set[str]] = {m: set() for m in files}
    for module, path in files.items():
        tree = ast.parse(path.read_text(), filename=str(path))
        for candidates in _imports(tree, module, path.name == "__init__.py"):
            top = candidates[0].split(".")[0]
            if top not in PACKAGES:
                external[module].add(top)
                continue
            for name in candidates:  # the longest known module the name starts with (`a.b.func` -> `a.b`)
                parts = name.split(".")
                while parts and ".".join(parts) not in files:
                    parts.pop()
                if parts:
                    if ".".join(parts) != module:
                        edges[module].add(".".join(parts))
                    break
    return edges, external


def cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan), each sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []
    counter = 0

    def visit(v: str) -> None:
        nonlocal counter
        index[v] = low[v] = counter
        counter += 1
        stack.append(v)
        on_stack.add(v)
        for w in sorted(edges.get(v, ())):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1 or v in edges.get(v, ()):
                found.append(sorted(component))

    for v in sorted(edges):
        if v not in index:
            visit(v)
    return sorted(found)


def layer_violations(edges: dict[str, set[str]], external: dict[str, set[str]]) -> list[str]:
    """`a -> b` for every import a module's layer may not make."""
    bad = []
    for module in sorted(edges):
        forbidden = FORBIDDEN[module.split(".")[0]]
        for target in sorted(edges[module] | external.get(module, set())):
            if target.split(".")[0] in forbidden:
                bad.append(f"{module} -> {target}")
    return bad


def main(argv: list[str] | None = None) -> int:
    argparse.ArgumentParser(description=__doc__.split("\n\n")[0]).parse_args(argv)
    edges, external = import_graph()
    for module in sorted(edges):
        for target in sorted(edges[module]):
            print(f"{module} -> {target}")
    failures = 0
    for violation in layer_violations(edges, external):
        print(f"layer violation: {violation}", file=sys.stderr)
        failures += 1
    for component in cycles(edges):
        print(f"import cycle: {' <-> '.join(component)}", file=sys.stderr)
        failures += 1
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
