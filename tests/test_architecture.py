"""The package's layering (docs/architecture.md), kept true: every import of every module
(function-level imports included, read with ``ast``) goes down the layer order, never
sideways or up, and no group of modules imports itself in a circle."""
from __future__ import annotations

import ast
import re
from pathlib import Path
from typing import Dict, List, Set

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "hpt_hpc"
# Lowest first. A unit may import units of lower layers only; units sharing a layer are
# independent of each other. "" is the package's own __init__.
LAYERS = (
    ("", "errors", "resources"),
    ("files",),
    ("progress", "device", "tracking", "hub"),
    ("config",),
    ("data", "models"),
    ("ssl",),
    ("plan",),
    ("train", "eval"),
    ("launch",),
    ("experiments",),
    ("api",),
    ("cli",),
)
LAYER_OF = {unit: i for i, units in enumerate(LAYERS) for unit in units}


def _modules() -> Dict[str, Path]:
    out = {}
    for path in PACKAGE.rglob("*.py"):
        parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        out[".".join(parts)] = path
    return out


MODULES = _modules()


def _is_package(name: str) -> bool:
    return MODULES[name].name == "__init__.py"


def _imports(name: str) -> Set[str]:
    """Every hpt_hpc module ``name`` imports (``from pkg import sub`` counts as ``pkg.sub``
    when ``sub`` is a module, else as ``pkg``)."""
    tree = ast.parse(MODULES[name].read_text())
    package = name if _is_package(name) else name.rsplit(".", 1)[0]
    found: Set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[:len(base) - node.level + 1]
                module = ".".join(base + ([node.module] if node.module else []))
            else:
                module = node.module or ""
            targets = [f"{module}.{a.name}" if f"{module}.{a.name}" in MODULES else module
                       for a in node.names]
        else:
            continue
        for target in targets:
            while target and target not in MODULES:
                target = target.rpartition(".")[0]
            if target.startswith("hpt_hpc") and target != name:
                found.add(target)
    return found


GRAPH = {name: _imports(name) for name in MODULES}


def _unit(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else ""


def test_every_module_has_a_layer():
    missing = sorted({_unit(m) for m in MODULES} - set(LAYER_OF))
    assert not missing, f"add these to LAYERS (and docs/architecture.md): {missing}"


def test_imports_follow_the_layer_order():
    bad = []
    for module, targets in GRAPH.items():
        unit = _unit(module)
        for target in targets:
            other = _unit(target)
            if other != unit and LAYER_OF[other] >= LAYER_OF[unit]:
                bad.append(f"{module} -> {target} ({unit or 'hpt_hpc'} layer "
                           f"{LAYER_OF[unit]}, {other or 'hpt_hpc'} layer {LAYER_OF[other]})")
    assert not bad, "imports against the layer order:\n" + "\n".join(sorted(bad))


def _cycle() -> List[str]:
    """One import circle among the modules, or []."""
    state: Dict[str, int] = {}
    stack: List[str] = []

    def visit(node: str) -> List[str]:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(GRAPH[node]):
            if state.get(nxt) == 1:
                return stack[stack.index(nxt):] + [nxt]
            if nxt not in state:
                found = visit(nxt)
                if found:
                    return found
        state[node] = 2
        stack.pop()
        return []

    for node in sorted(GRAPH):
        if node not in state:
            found = visit(node)
            if found:
                return found
    return []


def test_no_import_circles():
    cycle = _cycle()
    assert not cycle, "import circle: " + " -> ".join(cycle)


def test_tracking_knows_no_domain():
    """Tracking takes plain values: it imports nothing of the toolkit above it (errors and
    the domain-free file helpers only)."""
    for module, targets in GRAPH.items():
        if _unit(module) == "tracking":
            assert {_unit(t) for t in targets} <= {"", "errors", "files", "tracking"}, module


@pytest.mark.parametrize("broken, expect", [
    ({"hpt_hpc.tracking.runs": {"hpt_hpc.config.loader"}}, "layer order"),
    ({"hpt_hpc.data.loader": {"hpt_hpc.data.backends"}}, "circle"),
])
def test_the_checks_catch_violations(monkeypatch, broken, expect):
    """The rules fail on a planted upward import and a planted circle."""
    for module, extra in broken.items():
        monkeypatch.setitem(GRAPH, module, GRAPH[module] | extra)
    check = test_imports_follow_the_layer_order if expect == "layer order" \
        else test_no_import_circles
    with pytest.raises(AssertionError):
        check()


# One owner per fact, kept (#27): rules over the source text of every module.
SOURCES = {name: path.read_text() for name, path in MODULES.items()}
SUBMITIT_PRIVATE = "hpt_hpc.launch.submitit_private"  # the one adapter, pinned to a version
EXECUTOR_TABLE = "hpt_hpc.launch.executors"


def _private_submitit(text: str) -> List[str]:
    """submitit names outside its public API (the top-level names, ``submitit.helpers``):
    a module path (``submitit.local.local.LocalJob``, ``submitit.local._local``), and
    private attributes read through submitit objects (``JobEnvironment._usr_sig``)."""
    dotted = re.findall(r"\bsubmitit\.(?!helpers\b)(?:_|[a-z])\w*\.\w+|\bsubmitit\._\w+", text)
    through = re.findall(r"\b(?:JobEnvironment|AutoExecutor|LocalJob|SlurmJob|executor|job)"
                         r"\._(?!_)\w+", text)
    return dotted + through


def _executor_branches(text: str) -> List[str]:
    """Branches on an executor's name instead of asking the executor's class."""
    return re.findall(r"""(?:executor|kind)\s*(?:==|!=|in)\s*\(?\s*["'](?:slurm|local|debug)""",
                      text)


def test_no_private_submitit_name_outside_its_adapter():
    bad = {m: f for m, t in SOURCES.items() if m != SUBMITIT_PRIVATE
           for f in [_private_submitit(t)] if f}
    assert not bad, f"private submitit names belong in launch/submitit_private.py: {bad}"


def test_executors_are_chosen_only_through_the_class_table():
    bad = {m: f for m, t in SOURCES.items() for f in [_executor_branches(t)] if f}
    assert not bad, f"ask the executor (launch/executors.py), not its name: {bad}"
    makers = [m for m, t in SOURCES.items()
              if re.search(r"submitit\.(?:Auto|Slurm|Local|Debug)Executor\(", t)]
    assert makers == [EXECUTOR_TABLE], makers


REFERENCE_OWNER = "hpt_hpc.config.refs"
# The tracking layer sits below InitRef: the two MLflow URIs it writes are built in one
# place there, pinned to InitRef by tests/test_refs_owner.py.
MLFLOW_URIS = "hpt_hpc.tracking.registry"
_PREFIX = r"""["'](?:models:/|runs:/|stage:)"""


def _reference_parsing(text: str) -> List[str]:
    """A reference string taken apart by its prefix (only InitRef parses references)."""
    return re.findall(rf"startswith\(\s*{_PREFIX}|len\(\s*{_PREFIX}|"
                      rf"(?:split|partition)\(\s*{_PREFIX}", text)


def _reference_building(text: str) -> List[str]:
    """A reference put together by hand (InitRef builds them)."""
    return re.findall(rf"\bf{_PREFIX}[^\"']*\{{", text)


def test_only_initref_parses_and_builds_references():
    parsed = {m: f for m, t in SOURCES.items() if m != REFERENCE_OWNER
              for f in [_reference_parsing(t)] if f}
    assert not parsed, f"parse references with InitRef (config/refs.py): {parsed}"
    built = {m: f for m, t in SOURCES.items() if m not in (REFERENCE_OWNER, MLFLOW_URIS)
             for f in [_reference_building(t)] if f}
    assert not built, f"build references with InitRef (config/refs.py): {built}"


@pytest.mark.parametrize("rule, planted", [
    (_reference_parsing, 'if uri.startswith("models:/"):'),
    (_reference_parsing, "rel = uri[len('runs:/'):]"),
    (_reference_building, 'init = f"stage:{name}"'),
    (_reference_building, "uri = f'models:/{name}@{alias}'"),
    (_private_submitit, "sig = submitit.JobEnvironment._usr_sig()"),
    (_private_submitit, "return submitit.local.local.LocalJob(folder)"),
    (_private_submitit, 'CONTROLLER = "submitit.local._local"'),
    (_executor_branches, 'if record.executor == "slurm":'),
    (_executor_branches, "if kind != 'debug':"),
])
def test_the_source_rules_catch_violations(rule, planted):
    assert rule(planted)


PROTOCOL_TABLE = "hpt_hpc.config.protocols"


def _protocol_literals(text: str) -> List[str]:
    """Comparisons of a value with a protocol's or mode's name spelled as a string
    (``protocol == "linear"``, ``mode in ("cached", "knn")``): the protocol table's facts
    (its constants, modes and :func:`~hpt_hpc.config.protocols.probe_mode`) are asked, not
    spelled again."""
    from hpt_hpc.config.protocols import PROTOCOLS
    names = set(PROTOCOLS) | {m.name for p in PROTOCOLS.values() for m in p.modes}
    found = []
    for node in ast.walk(ast.parse(text)):
        if isinstance(node, ast.Compare):
            for side in [node.left, *node.comparators]:
                values = side.elts if isinstance(side, (ast.Tuple, ast.List, ast.Set)) \
                    else [side]
                found += [f"line {node.lineno}: {v.value!r}" for v in values
                          if isinstance(v, ast.Constant) and v.value in names]
    return found


def test_protocol_and_mode_names_are_compared_only_in_the_protocol_table():
    bad = {m: f for m, t in SOURCES.items() if m != PROTOCOL_TABLE
           for f in [_protocol_literals(t)] if f}
    assert not bad, f"ask config/protocols.py (PROTOCOLS, probe_mode), not a name: {bad}"
    assert _protocol_literals('if protocol == "linear" or mode in ("cached",): pass') == [
        "line 1: 'linear'", "line 1: 'cached'"]
