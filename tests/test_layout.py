"""The layout of the package (docs/design.md): each concern in its room, data flowing one way.

These read the source only. They hold the rules a change could break without any other test
noticing: no import circles, math that never imports Spark, a schedule that never reads the
estimator, one engine interface, one name per level, and functions short enough to read.
"""

import ast
import inspect
import pathlib

import pytest

from skdbn._engines import Engine, LocalEngine
from skdbn._processes import ProcessEngine

PACKAGE = pathlib.Path(__file__).parents[1] / "skdbn"
# Modules of one worker's training and its wire: they run in every worker process.
WORKER_SIDE = ("_flat", "_rbm", "_network", "_phase", "_sync", "_gossip", "_transport",
               "_watch", "_worker", "_devices", "_device_rows", "_device_training",
               "_torch_math")
LONGEST_FUNCTION = 60  # lines of a body, docstring aside


def _modules():
    """``{dotted name: (path, syntax tree)}`` of every module of the package."""
    modules = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        modules[name] = (path, ast.parse(path.read_text()))
    return modules


MODULES = _modules()


def _imports(name):
    """Modules ``name`` imports, at its top or inside functions (as dotted names; ours are
    resolved, a package's submodule counting as the submodule)."""
    path, tree = MODULES[name]
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[:len(package.split(".")) - node.level + 1]
                base = ".".join([*anchor, base] if base else anchor)
            submodules = {f"{base}.{alias.name}" for alias in node.names} & set(MODULES)
            found.update(submodules or {base})
    return found - {name}


def test_no_two_modules_import_each_other_even_lazily():
    graph = {name: _imports(name) & set(MODULES) for name in MODULES}
    # Every module reachable from each one; a module that reaches itself is in a circle.
    for start in graph:
        seen, todo = set(), list(graph[start])
        while todo:
            module = todo.pop()
            if module not in seen:
                seen.add(module)
                todo.extend(graph[module])
        assert start not in seen, f"{start} imports itself through {sorted(seen)}"


@pytest.mark.parametrize("module", WORKER_SIDE)
def test_worker_side_modules_never_import_spark_or_the_estimator(module):
    imported = _imports(f"skdbn.{module}")
    assert not {m for m in imported if m.split(".")[0] in ("pyspark", "sklearn")}
    assert not {m for m in imported if m.startswith("skdbn.spark") or m == "skdbn._dbn"}


def test_the_schedule_never_reads_the_estimator():
    imported = _imports("skdbn._schedule")
    assert "skdbn._dbn" not in imported and not any(m.startswith("sklearn") for m in imported)
    from skdbn._schedule import train

    assert list(inspect.signature(train).parameters) == ["settings", "data", "plan", "state"]


def test_the_estimator_neither_schedules_phases_nor_touches_spark_objects():
    imported = _imports("skdbn._dbn")
    assert not {"skdbn._engines", "skdbn._processes", "skdbn.spark.stages",
                "skdbn.spark.placement", "skdbn.spark.shards"} & imported
    assert not any(m.startswith("pyspark") for m in imported)


def test_every_engine_implements_the_engine_interface():
    pytest.importorskip("pyspark")
    from skdbn.spark.stages import SparkEngine

    for engine in (LocalEngine, ProcessEngine, SparkEngine):
        assert issubclass(engine, Engine) and not engine.__abstractmethods__
    # What the schedule asks of an engine is what the interface declares.
    _, tree = MODULES["skdbn._schedule"]
    asked = {node.attr for node in ast.walk(tree) if isinstance(node, ast.Attribute)
             and isinstance(node.value, ast.Name | ast.Attribute)
             and (getattr(node.value, "id", None) == "engine"
                  or getattr(node.value, "attr", None) == "engine")}
    declared = set(dir(Engine)) | set(Engine.__annotations__)
    assert asked and asked <= declared, asked - declared


def _functions():
    """``(module, class or None, function node)`` of every function of the package."""
    for name, (_, tree) in MODULES.items():
        for node in tree.body:
            if isinstance(node, ast.FunctionDef):
                yield name, None, node
            elif isinstance(node, ast.ClassDef):
                for member in ast.walk(node):
                    if isinstance(member, ast.FunctionDef):
                        yield name, node.name, member


def test_one_name_per_level():
    places = {}
    for module, owner, function in _functions():
        places.setdefault(function.name, set()).add((module, owner))
    engines = {"Engine", "LocalEngine", "ProcessEngine", "SparkEngine"}
    assert {owner for _, owner in places["run_phase"]} <= engines  # only the engines' level
    for name in ("train_phase", "run_worker", "run_with_retries", "_pretrain", "_finetune"):
        assert len({module for module, _ in places[name]}) == 1, (name, places[name])


def test_no_function_is_longer_than_a_screen():
    long = []
    for module, owner, function in _functions():
        body = function.body
        if isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant):
            body = body[1:]  # the docstring
        lines = body[-1].end_lineno - body[0].lineno + 1 if body else 0
        if lines > LONGEST_FUNCTION and (owner, function.name) != ("DistributedDBN",
                                                                   "__init__"):
            long.append(f"{module}.{function.name}: {lines} lines")
    assert not long


def test_the_estimator_is_the_scikit_learn_face_only():
    path, tree = MODULES["skdbn._dbn"]
    assert len(path.read_text().splitlines()) <= 800
    (estimator,) = [node for node in tree.body if isinstance(node, ast.ClassDef)
                    and node.name == "DistributedDBN"]
    assert estimator.end_lineno - estimator.lineno + 1 <= 700
