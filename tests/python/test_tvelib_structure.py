"""tvelib's modules form a hierarchy: no module imports one that imports it back, at the top of
the file or inside a function (a function-local import is how cycles hide)."""
import ast
from pathlib import Path

TVELIB = Path(__file__).resolve().parents[2] / "scripts" / "tvelib"


def imports_of(path: Path) -> set:
    """The tvelib modules `path` imports, anywhere in the file."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.level == 1:
            if node.module:
                found.add(node.module.split(".")[0])
            else:
                found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and (node.module or "").startswith("tvelib."):
            found.add(node.module.split(".")[1])
    return found


def test_no_import_cycle():
    graph = {p.stem: imports_of(p) & {q.stem for q in TVELIB.glob("*.py")} for p in TVELIB.glob("*.py")}
    state = {}

    def visit(module, path):
        if state.get(module) == "done":
            return
        assert state.get(module) != "active", "import cycle: " + " -> ".join(path + [module])
        state[module] = "active"
        for dependency in sorted(graph[module]):
            visit(dependency, path + [module])
        state[module] = "done"

    for module in sorted(graph):
        visit(module, [])
    assert "explainer" in graph and "training" in graph  # the test looked at the real package
