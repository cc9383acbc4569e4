"""The house's shape: every import in ablate/ points down the chain, and only the CLI imports lazily."""
import ast
import subprocess
import sys
from pathlib import Path

import ablate

PACKAGE = Path(ablate.__file__).resolve().parent


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports(tree: ast.AST, known: set[str]) -> set[str]:
    """The ablate modules a file imports anywhere in it (module level or inside functions)."""
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            # `from ablate import tracking` imports the module ablate.tracking; `from ablate.x import f` ablate.x
            names = [f"{node.module}.{a.name}" if f"{node.module}.{a.name}" in known else node.module
                     for a in node.names]
        else:
            continue
        found |= {n for n in names if n in known}
    return found


def graph() -> dict[str, set[str]]:
    files = {module_name(p): p for p in PACKAGE.rglob("*.py")}
    known = set(files)
    return {name: imports(ast.parse(path.read_text()), known) - {name} for name, path in files.items()}


def test_no_import_cycle_in_ablate():
    edges = graph()
    state: dict[str, str] = {}

    def visit(node, trail):
        state[node] = "open"
        for nxt in sorted(edges[node]):
            if nxt == "ablate" or nxt.startswith(node + "."):
                continue  # a package importing its own submodules is not a cycle
            if state.get(nxt) == "open":
                cycle = trail[trail.index(nxt):] + [nxt] if nxt in trail else [node, nxt]
                raise AssertionError("import cycle: " + " -> ".join(cycle))
            if nxt not in state:
                visit(nxt, trail + [nxt])
        state[node] = "done"

    for node in sorted(edges):
        if node not in state:
            visit(node, [node])


def test_the_flow_points_down():
    """The results side never reaches into the runner, and the runner never into the report."""
    edges = graph()
    assert "ablate.study" not in edges["ablate.report"] | edges["ablate.gradcam"] | edges["ablate.results"]
    assert "ablate.report" not in edges["ablate.study"] | edges["ablate.spec"] | edges["ablate.train"]
    assert "ablate.gradcam" not in edges["ablate.report"]  # gradcam and report share the results reader
    assert "ablate.report" not in edges["ablate.gradcam"]
    assert not {"ablate.study", "ablate.spec", "ablate.storage"} & edges["ablate.train"]  # a trial needs no study
    assert "optuna" not in top_level_imports(PACKAGE / "tracking.py")  # the MLflow side needs no Optuna


def top_level_imports(path: Path) -> set[str]:
    """The top-level packages a file imports (tag names such as 'optuna.study' are not imports)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {a.name.split(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module.split(".")[0])
    return found


def test_only_the_cli_imports_inside_functions():
    lazy = {}
    for path in PACKAGE.rglob("*.py"):
        if path.name == "cli.py":
            continue  # `ablate --help` must not load torch: the commands import the library when they run
        tree = ast.parse(path.read_text())
        for func in (n for n in ast.walk(tree) if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef))):
            for node in ast.walk(func):
                if isinstance(node, (ast.Import, ast.ImportFrom)):
                    lazy.setdefault(module_name(path), []).append(f"line {node.lineno}")
    assert not lazy, f"function-level imports outside cli.py: {lazy}"


def test_reading_a_study_and_its_report_import_no_torch():
    """What keeps `ablate report` fast: the study file, the registry's metadata and the report need no torch, timm,
    Lightning, scikit-learn or scipy.stats (a model is built, and its module's class imported, only to train)."""
    code = ("import sys; import ablate.report; from ablate.spec import load_study, grid_cells; "
            "grid_cells(load_study('studies/cbam_vs_se.yaml')); "
            "print(sorted({'torch', 'timm', 'pytorch_lightning', 'sklearn', 'scipy.stats'} & set(sys.modules)))")
    proc = subprocess.run([sys.executable, "-c", code], cwd=PACKAGE.parent, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.strip() == "[]"


def test_no_library_file_over_500_lines():
    """One job per room: a file that outgrows 500 lines holds more than one, and a feature goes in a room of its own."""
    long = {str(p.relative_to(PACKAGE.parent)): n for p in PACKAGE.rglob("*.py")
            if (n := len(p.read_text().splitlines())) > 500}
    assert not long, f"library files over 500 lines: {long}"
