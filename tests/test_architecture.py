"""The package's import graph, read with `ast` (every import, also those inside functions): no
import circle, and no import from a lower layer to a higher one (docs/ARCHITECTURE.md draws the
layers). A new module must be placed in LAYERS."""

import ast
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PACKAGE = REPO / "snp_service"

# lower numbers are lower layers: a module may import its own layer and the layers below it
LAYERS = {
    0: ["snp_service", "errors", "failures", "units", "optim", "provenance", "checkpoints", "clusters", "snp", "heads", "readout", "prune", "structural", "tables", "compare",
        "figures", "synthetic", "models", "models.registry", "models.cct", "models.vgg",
        "models.torchvision_models", "models.text"],  # pure core
    1: ["spec", "spec.base", "spec.sections", "spec.identity", "spec.derived", "spec.job", "spec.loading"],  # the
    # job spec (config): its sections, its identity (job ids, stage keys), derived jobs, loading
    2: ["measure", "localfiles", "leases", "store", "data", "devicedata", "text", "console"],  # per-point science on a spec; storage;
    # datasets; what Ray writes to the console
    3: ["train", "actors", "report", "interrupts", "reuse"],  # Ray Train, Ray actors, the report; the driver's
    # threads; reuse of finished stages
    4: ["pipeline"],  # the stages
    5: ["studies", "sweep"],  # several jobs as one
    6: ["submit", "localdev", "cli"],  # the commands
}
LAYER = {("snp_service." + m if m != "snp_service" else m): n for n, ms in LAYERS.items() for m in ms}


def modules() -> dict[str, Path]:
    out = {}
    for f in PACKAGE.rglob("*.py"):
        name = ".".join(f.relative_to(REPO).with_suffix("").parts)
        out[name.removesuffix(".__init__")] = f
    return out


def import_graph() -> dict[str, set[str]]:
    mods = modules()
    graph = {}
    for name, f in mods.items():
        edges = set()
        for node in ast.walk(ast.parse(f.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] == "snp_service":
                for a in node.names:
                    sub = f"{node.module}.{a.name}"
                    edges.add(sub if sub in mods else node.module)
            elif isinstance(node, ast.Import):
                edges.update(a.name for a in node.names if a.name.split(".")[0] == "snp_service")
        graph[name] = {e for e in edges if e != name}
    return graph


def test_every_module_has_a_layer():
    missing = sorted(set(modules()) - set(LAYER))
    assert not missing, f"place these modules in a layer of tests/test_architecture.py: {missing}"


def test_no_import_runs_up_a_layer():
    up = [f"{a} (layer {LAYER[a]}) imports {b} (layer {LAYER[b]})"
          for a, bs in import_graph().items() for b in sorted(bs) if LAYER[b] > LAYER[a]]
    assert not up, "imports from a lower layer to a higher one:\n" + "\n".join(up)


def test_no_import_circle():
    graph = import_graph()
    state: dict[str, int] = {}  # 1: on the current path, 2: done

    def visit(node: str, path: list[str]) -> list[str] | None:
        state[node] = 1
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return path + [node, nxt]
            if nxt not in state:
                found = visit(nxt, path + [node])
                if found:
                    return found
        state[node] = 2
        return None

    for start in sorted(graph):
        if start not in state:
            cycle = visit(start, [])
            assert cycle is None, "import circle: " + " -> ".join(cycle[cycle.index(cycle[-1]):])


def test_no_private_name_is_imported_across_modules():
    private = []
    for name, f in {**modules(), **{p.stem: p for p in (REPO / "tests").glob("*.py")},
                    **{p.stem: p for p in (REPO / "bench").glob("*.py")}}.items():
        for node in ast.walk(ast.parse(f.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("snp_service"):
                private += [f"{f.relative_to(REPO)} imports {node.module}.{a.name}" for a in node.names
                            if a.name.startswith("_") and a.name != "__version__"]
    assert not private, "\n".join(private)


def test_the_check_finds_a_circle_and_an_upward_import(tmp_path, monkeypatch):
    """The checks above can fail: a graph with a circle and an upward edge is caught."""
    graph = {"snp_service.snp": {"snp_service.pipeline"}, "snp_service.pipeline": {"snp_service.snp"}}
    assert any(LAYER[b] > LAYER[a] for a, bs in graph.items() for b in bs)
    monkeypatch.setattr("tests.test_architecture.import_graph", lambda: graph)
    try:
        test_no_import_circle()
    except AssertionError as e:
        assert "snp_service.pipeline -> snp_service.snp -> snp_service.pipeline" in str(e)
    else:
        raise AssertionError("the circle was not found")


def test_the_spec_knows_the_pipelines_stages():
    from snp_service import pipeline
    from snp_service.spec import STAGE_ORDER

    assert tuple(name for name, _ in pipeline.STAGES) == STAGE_ORDER


MAX_MODULE_LINES = 600
MAX_FUNCTION_LINES = 70


def test_no_module_or_function_is_too_long():
    """Issue 28: no module of the package over 600 lines and no function over 70 (decorators not
    counted), so each stays readable whole; a long one is split where it has seams."""
    long_modules, long_functions = [], []
    for name, f in sorted(modules().items()):
        text = f.read_text()
        if len(text.splitlines()) > MAX_MODULE_LINES:
            long_modules.append(f"{f.relative_to(REPO)}: {len(text.splitlines())} lines")
        for node in ast.walk(ast.parse(text)):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                lines = node.end_lineno - node.lineno + 1
                if lines > MAX_FUNCTION_LINES:
                    long_functions.append(f"{f.relative_to(REPO)}:{node.lineno} {node.name}: {lines} lines")
    assert not long_modules, f"modules over {MAX_MODULE_LINES} lines: {long_modules}"
    assert not long_functions, f"functions over {MAX_FUNCTION_LINES} lines: {long_functions}"
