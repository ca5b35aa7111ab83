"""The rooms and their one-way doors, checked on the source tree (ast, no imports run):

* envs/ and agents/ never import rlhf/ (rlhf/ uses them, not the other way round);
* no import cycles among rlhf/ modules, function-level imports included; the algorithm
  registry (rlhf/algos/__init__.py), which names every algorithm by design, is the one
  plugin point left out;
* no algorithm module imports another algorithm's module;
* algorithm files stay readable: at most 350 lines.

A failure names the offending file and import, so a change that breaks a rule says where.
"""
from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("rlhf", "envs", "agents")
REGISTRY = "rlhf.algos"
MAX_ALGORITHM_LINES = 350


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {module_name(p): p for top in PACKAGES for p in (ROOT / top).rglob("*.py")}


def imports_of(path: Path) -> dict[str, int]:
    """Project modules imported anywhere in the file (module, line)."""
    name = module_name(path)
    package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
    found: dict[str, int] = {}
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                up = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                base = ".".join(up + ([base] if base else []))
            targets = [base] + [f"{base}.{alias.name}" for alias in node.names]
        else:
            continue
        for target in targets:
            if target in MODULES and target != name:
                found.setdefault(target, node.lineno)
    return found


GRAPH = {name: imports_of(path) for name, path in MODULES.items()}


def where(module: str, target: str) -> str:
    return f"{MODULES[module].relative_to(ROOT)}:{GRAPH[module][target]} imports {target}"


def test_envs_and_agents_never_import_rlhf():
    bad = [where(m, t) for m, deps in GRAPH.items() if m.split(".")[0] in ("envs", "agents")
           for t in deps if t.split(".")[0] == "rlhf"]
    assert not bad, "envs/ and agents/ must not import rlhf/:\n" + "\n".join(bad)


def test_no_import_cycles_in_rlhf():
    nodes = {m for m in GRAPH if m.startswith("rlhf") and m != REGISTRY and MODULES[m].name != "__init__.py"}
    edges = {m: {t for t in GRAPH[m] if t in nodes} for m in nodes}
    cycles, index, low, stack, on_stack = [], {}, {}, [], set()

    def visit(v):  # Tarjan's strongly connected components
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in edges[v]:
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
            if len(component) > 1:
                cycles.append(sorted(component))

    for v in sorted(nodes):
        if v not in index:
            visit(v)
    detail = [" <-> ".join(c) + ": " + "; ".join(where(a, b) for a in c for b in c if b in GRAPH[a]) for c in cycles]
    assert not cycles, "import cycles:\n" + "\n".join(detail)


def algorithm_modules() -> list[str]:
    return sorted(m for m in MODULES if m.startswith(REGISTRY + ".") and m != "rlhf.algos.base")


def test_no_algorithm_imports_another():
    algos = set(algorithm_modules())
    bad = [where(m, t) for m in algos for t in GRAPH[m] if t in algos]
    assert not bad, "an algorithm imports another algorithm's module (move the shared part out):\n" + "\n".join(bad)


def test_algorithm_files_stay_short():
    long = {str(MODULES[m].relative_to(ROOT)): n for m in algorithm_modules()
            if (n := len(MODULES[m].read_text().splitlines())) > MAX_ALGORITHM_LINES}
    assert not long, f"algorithm files over {MAX_ALGORITHM_LINES} lines: {long}"


def test_the_rules_catch_a_violation(tmp_path):
    """The checker itself: an envs/ file importing rlhf is found (guards against a vacuous pass)."""
    probe = ROOT / "envs" / "_structure_probe.py"
    probe.write_text("def f():\n    from rlhf import harness\n")
    try:
        MODULES["envs._structure_probe"] = probe
        assert "rlhf.harness" in imports_of(probe)
    finally:
        probe.unlink()
        MODULES.pop("envs._structure_probe", None)
