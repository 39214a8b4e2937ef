"""The code's layout: every module imports alone, none in a circle, no private name crosses a
module, the scripts go through common.py only, and common's face names what they use."""

import ast
import re
import subprocess
import sys

import common
from conftest import ROOT

PACKAGES = ("staged_clip", "toy")
SCRIPTS = ("bake", "microwave", "auto_microwave", "normal", "batch_bake", "evaluate", "bench", "serve")


def modules():
    """Every module of the packages, as dotted names."""
    return sorted(f"{pkg}.{path.stem}" for pkg in PACKAGES for path in (ROOT / pkg).glob("*.py")
                  if path.stem not in ("__init__", "__main__"))


def source(name):
    return (ROOT / (name.replace(".", "/") + ".py")).read_text()


def imported(name):
    """{local name: module} of the package modules a module imports, anywhere in it."""
    package = name.split(".")[0]
    found = {}
    for node in ast.walk(ast.parse(source(name))):
        if isinstance(node, ast.ImportFrom):
            base = package if node.level else node.module
            if node.level and node.module:
                base = f"{package}.{node.module}"
            if base is None or base.split(".")[0] not in PACKAGES:
                continue
            for alias in node.names:
                dotted = f"{base}.{alias.name}"
                found[alias.asname or alias.name] = dotted if dotted in modules() else base
        elif isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.split(".")[0] in PACKAGES:
                    found[alias.asname or alias.name] = alias.name
    return found


def test_every_module_imports_alone():
    code = ("import importlib, sys\n"
            "for name in sys.argv[1:]:\n"
            "    for loaded in [m for m in sys.modules if m.split('.')[0] in ('staged_clip', 'toy')]:\n"
            "        del sys.modules[loaded]\n"
            "    importlib.import_module(name)\n")
    done = subprocess.run([sys.executable, "-c", code, *modules()], cwd=ROOT, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert len(modules()) >= 20


def test_no_module_imports_in_a_circle():
    graph = {name: {m for m in imported(name).values() if m in modules() and m != name} for name in modules()}
    state = {}

    def visit(name, path):
        if state.get(name) == "done":
            return
        assert state.get(name) != "open", "import cycle: " + " -> ".join([*path, name])
        state[name] = "open"
        for other in sorted(graph[name]):
            visit(other, [*path, name])
        state[name] = "done"

    for name in modules():
        visit(name, [])
    assert graph["staged_clip.errors"] == set()  # the bottom imports nothing of the package


def test_no_private_name_crosses_a_module():
    for name in modules():
        tree = ast.parse(source(name))
        ours = imported(name)
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and (node.level or (node.module or "").split(".")[0] in PACKAGES):
                assert not any(a.name.startswith("_") for a in node.names), (name, [a.name for a in node.names])
            if (isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id in ours
                    and node.attr.startswith("_") and not node.attr.startswith("__")):
                raise AssertionError(f"{name} uses {node.value.id}.{node.attr}")


def test_no_module_is_longer_than_a_page_or_two():
    for name in modules():
        assert source(name).count("\n") <= 400, name


def test_scripts_import_common_and_no_other_script():
    for script in SCRIPTS:
        tree = ast.parse((ROOT / f"{script}.py").read_text())
        names = {alias.name.split(".")[0] for node in ast.walk(tree) if isinstance(node, ast.Import)
                 for alias in node.names}
        names |= {node.module.split(".")[0] for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)}
        assert "common" in names and not names & (set(SCRIPTS) | set(PACKAGES)), (script, names)


def test_no_test_imports_another_test():
    for path in (ROOT / "tests").glob("*.py"):
        tree = ast.parse(path.read_text())
        names = {alias.name for node in ast.walk(tree) if isinstance(node, ast.Import) for alias in node.names}
        names |= {node.module for node in ast.walk(tree) if isinstance(node, ast.ImportFrom) and node.module}
        assert not {n for n in names if n.split(".")[0].startswith("test_")}, path.name  # shared helpers: conftest


def test_the_door_is_at_most_sixty_names():
    assert len(common.__all__) <= 60, len(common.__all__)


def test_common_names_exactly_what_it_offers_and_the_scripts_use_only_that():
    assert len(set(common.__all__)) == len(common.__all__)
    assert all(hasattr(common, name) for name in common.__all__)
    offered = {name for name in vars(common) if not name.startswith("_")}
    assert offered == set(common.__all__)  # nothing imported into common without being offered
    for script in SCRIPTS:
        used = set(re.findall(r"\bcommon\.([A-Za-z_]\w*)", (ROOT / f"{script}.py").read_text()))
        assert used <= set(common.__all__), (script, used - set(common.__all__))


def test_the_door_offers_only_what_the_scripts_use():
    used = set()
    for script in SCRIPTS:
        used |= set(re.findall(r"\bcommon\.([A-Za-z_]\w*)", (ROOT / f"{script}.py").read_text()))
    assert set(common.__all__) == used


def functions(name):
    """(name, lines, parameters other than self/cls) of every function in a module."""
    for node in ast.walk(ast.parse(source(name))):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            a = node.args
            params = [*a.posonlyargs, *a.args, *a.kwonlyargs, *filter(None, [a.vararg, a.kwarg])]
            own = [p for p in params if p.arg not in ("self", "cls", "ctx")]
            yield node.name, node.end_lineno - node.lineno + 1, len(own)


def test_no_function_of_the_package_is_long_or_takes_many_arguments():
    for name in modules():
        if name.startswith("staged_clip."):
            for function, lines, params in functions(name):
                assert lines <= 60, f"{name}.{function} is {lines} lines long"
                assert params <= 8, f"{name}.{function} takes {params} arguments: give it an object instead"


def test_help_answers_without_loading_torch():
    code = ("import sys, importlib\n"
            "for name in sys.argv[1:]:\n"
            "    try:\n"
            "        importlib.import_module(name).parse_args(['--help'])\n"
            "    except SystemExit:\n"
            "        pass\n"
            "assert 'torch' not in sys.modules, 'torch was imported'\n")
    done = subprocess.run([sys.executable, "-c", code, *SCRIPTS], cwd=ROOT, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert done.stdout.count("usage:") == len(SCRIPTS)


def test_every_estimator_has_one_learner():
    from staged_clip import learners, settings
    assert tuple(learners.LEARNERS) == settings.META_GRADS
    assert all(learner.name == name for name, learner in learners.LEARNERS.items())
