"""The shape of the code: a config is read while planning and nowhere after, no module
imports one that imports it back, and no module grows past about 400 lines."""

import ast
import os

from tljax import config
from tljax.run import sweep

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PACKAGE = os.path.join(ROOT, "tljax")


def _modules() -> dict:
    out = {}
    for root, _, names in os.walk(PACKAGE):
        for name in names:
            if name.endswith(".py"):
                path = os.path.join(root, name)
                module = os.path.relpath(path[:-3], ROOT).replace(os.sep, ".")
                out[module.removesuffix(".__init__")] = path
    return out


def _imports(modules: dict) -> dict:
    """Returns ``{module: modules of tljax it imports}``, deferred imports included (a
    package's ``__init__`` is not counted as its modules' importer)."""
    graph = {m: set() for m in modules}
    for module, path in modules.items():
        for node in ast.walk(ast.parse(open(path).read())):
            if isinstance(node, ast.Import):
                graph[module] |= {a.name for a in node.names if a.name in modules}
            elif isinstance(node, ast.ImportFrom) and node.module:
                for alias in node.names:
                    full = f"{node.module}.{alias.name}"
                    graph[module].add(full if full in modules else node.module)
        graph[module] &= set(modules)
        graph[module].discard(module)
    return graph


def _cycle(graph: dict) -> list:
    """Returns one import cycle of ``graph`` as a list of modules, or []."""
    state, stack = {}, []

    def visit(m):
        state[m] = "open"
        stack.append(m)
        for n in sorted(graph[m]):
            if state.get(n) == "open":
                return stack[stack.index(n):] + [n]
            if n not in state:
                found = visit(n)
                if found:
                    return found
        state[m] = "done"
        stack.pop()
        return []

    for m in sorted(graph):
        if m not in state:
            found = visit(m)
            if found:
                return found
    return []


def test_no_module_imports_a_module_that_imports_it_back():
    graph = _imports(_modules())
    assert graph["tljax.run.sweep"] >= {"tljax.run.plan", "tljax.run.execute"}  # it sees them
    assert _cycle(graph) == []


def test_a_cycle_is_found_where_there_is_one():
    assert _cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]


def test_no_module_passes_about_400_lines():
    long = {m: n for m, path in _modules().items()
            if (n := sum(1 for _ in open(path))) > 430}
    assert long == {}


def test_the_config_is_read_while_planning_and_nowhere_after(tmp_path, stubbed_training):
    cfg = config.load(os.path.join(ROOT, "experiments", "lp_vs_ft_self_pretrained.py"))
    config.apply_overrides(cfg, ["pretrain.steps=5", "steps=3", "seeds=[0,1]", "select_seeds=1",
                                 'strategies=["linear_probe","last_k:1"]',
                                 'sweep={"lr": [1e-3, 3e-2]}', 'final_fit="train+val"'])
    workdir = str(tmp_path / "w")
    the_plan, resources = sweep.prepare(cfg, workdir, log=lambda msg: None)
    cfg.unlock()
    for key in list(cfg.keys()):  # any later read of the config fails
        del cfg[key]
    records = sweep.run_plan(the_plan, resources, workdir, log=lambda msg: None)
    runs = [(r["strategy"], r["seed"], r["hparams"]) for r in records]
    assert runs == [
        ("linear_probe", 0, {}), ("linear_probe", 1, {}),
        ("linear_probe", 0, {"final_fit": "train+val"}),
        ("linear_probe", 1, {"final_fit": "train+val"}),
        ("last_k:1", 0, {"lr": 1e-3}), ("last_k:1", 0, {"lr": 3e-2}),  # the grid, seed 0
        ("last_k:1", 1, {"lr": 3e-2}),  # the point selected on val, the other seed
        ("last_k:1", 0, {"lr": 3e-2, "final_fit": "train+val"}),
        ("last_k:1", 1, {"lr": 3e-2, "final_fit": "train+val"})]
    assert all(r["status"] == "ok" for r in records)
