"""The layers and the size of modules, read from the source (ast) by scripts/import_graph.py:
core <- variants <- pipelines, only pipelines import Ray or MLflow, no import cycle, no module
over MAX_LINES lines."""
import importlib.util
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
_spec = importlib.util.spec_from_file_location("import_graph", REPO / "scripts" / "import_graph.py")
graph = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(graph)

MAX_LINES = 450


def test_no_import_cycle():
    edges, _ = graph.import_graph()
    assert graph.cycles(edges) == []


def test_no_layer_violation():
    edges, external = graph.import_graph()
    assert graph.layer_violations(edges, external) == []


def test_no_module_over_the_line_limit():
    long = {name: n for name, path in graph.module_files().items()
            if (n := len(path.read_text().splitlines())) > MAX_LINES}
    assert long == {}


def test_the_graph_sees_the_project():
    """The analysis reads real imports (a control for the checks above, which pass on nothing)."""
    edges, external = graph.import_graph()
    assert "core.variant" in edges["variants.vae"]
    assert "pipelines.encode.job" in edges["pipelines.encode.command"]  # `from pipelines.encode.job import ...`
    assert "pipelines.encode" in edges["pipelines.cli"]  # an import inside a function counts
    assert "ray" in external["pipelines.encode.job"]
    assert "core.variant" not in edges["core.registry"]  # under `if TYPE_CHECKING:` only


def test_cycles_and_violations_are_found_in_a_synthetic_tree(tmp_path):
    for package, files in {
        "core": {"__init__.py": "", "a.py": "from core import b\n", "b.py": "def f():\n    import core.a\n",
                 "c.py": "import ray\nfrom variants.v import V\n"},
        "variants": {"__init__.py": "", "v.py": "from . import w\n", "w.py": "from .v import x\n"},
        "pipelines": {"__init__.py": "import mlflow\nfrom core import a\n"},
    }.items():
        (tmp_path / package).mkdir()
        for name, text in files.items():
            (tmp_path / package / name).write_text(text)
    edges, external = graph.import_graph(tmp_path)
    assert graph.cycles(edges) == [["core.a", "core.b"], ["variants.v", "variants.w"]]
    assert graph.layer_violations(edges, external) == ["core.c -> ray", "core.c -> variants.v"]


def test_the_command_prints_the_edges_of_the_project_and_passes():
    run = lambda *extra: subprocess.run([sys.executable, str(REPO / "scripts" / "import_graph.py"), *extra],  # noqa: E731
                                        capture_output=True, text=True, cwd=REPO, timeout=60)
    ok = run()
    assert ok.returncode == 0, ok.stderr
    assert "variants.m2 -> core.variant" in ok.stdout.splitlines()
    # (test_cycles_and_violations_are_found shows the same analysis fails on a cycle)


REGISTRY_WITHOUT_ENTRY_POINTS = r"""
import importlib.metadata, sys
importlib.metadata.entry_points = lambda **kw: []  # a source tree that was never installed
import core.registry
core.registry.entry_points = importlib.metadata.entry_points
import core.serialization, core.training
assert not [m for m in sys.modules if m.split(".")[0] in ("variants", "pipelines")], "core pulled in an upper layer"
try:
    core.registry.get_variant("vae")
    raise SystemExit("core alone found a variant")
except KeyError as err:
    assert "known: none" in str(err), err
import pipelines  # the layer above tells the registry where the built-ins are
print(sorted(core.registry.available_variants()))
"""


def test_core_imports_no_variant_and_pipelines_registers_the_builtins():
    proc = subprocess.run([sys.executable, "-c", REGISTRY_WITHOUT_ENTRY_POINTS], capture_output=True, text=True,
                          cwd=REPO, env={"PYTHONPATH": str(REPO), "PATH": "/usr/bin:/bin"}, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.split("\n")[-2] == "['aae', 'cvae', 'dcign', 'dvae', 'iwae', 'm2', 'vae']"
