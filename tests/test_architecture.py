"""The house plan: subpackages import only downwards, no module imports itself back through others, no module
rebinds a global, and the library never imports the experiment drivers or the tests."""

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).parent.parent / "micl_probe"
# rank of each part of the package: a module may import its own subpackage and parts of strictly lower rank
RANK = {"core": 0, "tasks": 1, "testing": 2, "measure": 2, "interventions": 3, "evaluation": 3, "organisms": 4,
        "viz": 4, "attn_report": 5, "train": 5, "explore": 5, "compare": 5, "__init__": 6}


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports(path: Path) -> set[str]:
    """Every micl_probe module `path` imports, at any depth of the file (function-level imports too)."""
    name = module_name(path)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            base = package
            for _ in range(node.level - 1):
                base = base.rpartition(".")[0]
            mod = (f"{base}.{node.module}" if node.module else base) if node.level else node.module
            if mod.split(".")[0] not in ("micl_probe", "experiments", "tests", "conftest"):
                continue
            submodules = {f"{mod}.{a.name}" for a in node.names if _exists(f"{mod}.{a.name}")}
            # `from . import plots` imports the module plots, not the package around it
            found.update(submodules if submodules and not node.module else {mod} | submodules)
        elif isinstance(node, ast.Import):
            found.update(a.name for a in node.names if a.name.split(".")[0] in ("micl_probe", "experiments"))
    return found - {name}


def _exists(module: str) -> bool:
    path = PACKAGE.parent / module.replace(".", "/")
    return path.with_suffix(".py").is_file() or path.is_dir()


def part(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "__init__"


def graph() -> dict[str, set[str]]:
    return {module_name(p): imports(p) for p in sorted(PACKAGE.rglob("*.py"))}


def test_parts_import_only_downwards():
    assert {part(m) for m in graph()} == set(RANK), "a new part of the package needs a rank here"
    upward = [(m, i) for m, deps in graph().items() for i in deps
              if not i.startswith("micl_probe") or (part(i) != part(m) and RANK[part(i)] >= RANK[part(m)])]
    assert not upward, "imports that do not go down: " + ", ".join(f"{m} -> {i}" for m, i in upward)


def test_no_import_circles():
    g = graph()
    for start in g:  # depth-first search for a path back to `start`
        stack, seen = list(g[start]), set()
        while stack:
            m = stack.pop()
            assert m != start, f"{start} imports itself back"
            if m not in seen:
                seen.add(m)
                stack.extend(g.get(m, ()))


@pytest.mark.parametrize("path", sorted(PACKAGE.rglob("*.py")), ids=lambda p: module_name(p))
def test_no_module_rebinds_global_state(path):
    """Per-call data travels through calls (kwargs, objects the caller holds), never through `global`."""
    assert not [n for n in ast.walk(ast.parse(path.read_text())) if isinstance(n, (ast.Global, ast.Nonlocal))]


def test_every_exported_name_says_what_it_is():
    """Every name a subpackage exports has its own docstring: a class's is not the dataclass signature nor its base
    class's (help(micl_probe.DARA) opens with DARA, not with torch's nn.Module)."""
    import importlib
    import inspect

    missing = []
    for module in ("micl_probe", "micl_probe.core", "micl_probe.tasks", "micl_probe.measure",
                   "micl_probe.interventions", "micl_probe.evaluation", "micl_probe.organisms", "micl_probe.viz"):
        mod = importlib.import_module(module)
        for name in getattr(mod, "__all__", []):
            obj = getattr(mod, name)
            if not callable(obj):
                continue
            doc = vars(obj).get("__doc__") if inspect.isclass(obj) else obj.__doc__
            if not doc or not doc.strip() or doc.startswith(f"{name}("):
                missing.append(f"{module}.{name}")
    assert not missing, f"no docstring of their own: {missing}"
    import micl_probe

    assert micl_probe.DARA.__doc__.startswith("DARA factors")
