"""No import circle among the project's modules (issue 34, item 4): arrows between modules
point one way, so each module can be read, tested and imported after the ones it uses. Every
import counts, also one inside a function (a circle deferred to call time is still a circle),
read from the source with ast, so no test order or import cache can hide one."""

import ast
import graphlib
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PACKAGES = ("shared", "jax_lora", "tf_baseline", "benchmarks", "app")


def modules_of(root: Path) -> dict[str, Path]:
    """Dotted name -> file of each module of root's PACKAGES (a package by its __init__.py)."""
    modules = {}
    for package in PACKAGES:
        for path in sorted((root / package).rglob("*.py")) if (root / package).is_dir() else ():
            parts = path.relative_to(root).with_suffix("").parts
            modules[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return modules


def imports_of(module: str, path: Path, modules: dict[str, Path]) -> set[str]:
    """The modules of `modules` that `module` (at `path`) imports anywhere in it: `import a.b`
    is a.b; `from a.b import c` is a.b.c when c is a module, else a.b; relative forms
    resolved. Not the parent packages Python runs first: a package's __init__ may import its
    own submodules, and a submodule its siblings."""
    own_package = module.split(".") if path.name == "__init__.py" else module.split(".")[:-1]
    names = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            names |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # from . import x, from ..y import z
                parent = own_package[:len(own_package) - node.level + 1]
                base = ".".join([*parent, *([base] if base else [])])
            names |= {f"{base}.{alias.name}" if f"{base}.{alias.name}" in modules else base
                      for alias in node.names}
    return {name for name in names if name in modules and name != module}


def import_graph(root: Path) -> dict[str, set[str]]:
    """Module -> the project's modules it imports."""
    modules = modules_of(root)
    return {module: imports_of(module, path, modules) for module, path in modules.items()}


def a_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One circle of imports, each module importing the next (the first repeated at the end);
    None when there is none."""
    try:
        tuple(graphlib.TopologicalSorter(graph).static_order())
    except graphlib.CycleError as error:  # graphlib lists each module before its importer
        return error.args[1][::-1]
    return None


def test_no_module_imports_itself_through_others():
    graph = import_graph(REPO)
    assert {"shared.cli", "jax_lora.train", "tf_baseline.train"} <= set(graph)  # it read them
    cycle = a_cycle(graph)
    assert cycle is None, "import circle: " + " -> ".join(cycle)


def write_package(root: Path, files: dict[str, str]) -> Path:
    for name, text in files.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_text(text)
    return root


def test_the_check_sees_a_circle_closed_inside_a_function(tmp_path):
    files = {"jax_lora/__init__.py": "",
             "jax_lora/tuners/__init__.py": "from jax_lora.tuners import ia3\n",
             "jax_lora/tuners/ia3.py": "def read():\n    from jax_lora.peft_format import X\n",
             "jax_lora/peft_format.py": "import jax_lora.tuners\nX = 1\n"}
    graph = import_graph(write_package(tmp_path / "with", files))
    cycle = a_cycle(graph)
    assert cycle is not None and set(cycle) == {"jax_lora.tuners", "jax_lora.tuners.ia3",
                                                "jax_lora.peft_format"}
    assert all(imported in graph[module] for module, imported in zip(cycle, cycle[1:]))
    # The same modules with the function's import pointing down instead: no circle.
    files["jax_lora/tuners/ia3.py"] = "def read():\n    from jax_lora.names import X\n"
    files["jax_lora/names.py"] = "X = 1\n"
    assert a_cycle(import_graph(write_package(tmp_path / "without", files))) is None


def test_the_check_resolves_relative_imports(tmp_path):
    root = write_package(tmp_path, {"shared/__init__.py": "", "shared/data/__init__.py": "",
                                    "shared/data/spec.py": "from ..cli import main\n",
                                    "shared/cli.py": "from .data import spec\n"})
    assert import_graph(root)["shared.data.spec"] == {"shared.cli"}
    assert import_graph(root)["shared.cli"] == {"shared.data.spec"}
    assert set(a_cycle(import_graph(root))) == {"shared.cli", "shared.data.spec"}


def test_a_package_and_its_submodules_importing_each_other_by_name_is_no_circle(tmp_path):
    """`from jax_lora.tuners import prompt` in a sibling imports the submodule, not the
    package's names; `from jax_lora.tuners import Tuning` does import the package."""
    files = {"jax_lora/__init__.py": "",
             "jax_lora/tuners/__init__.py": "from jax_lora.tuners import prefix, prompt\n"
                                            "Tuning = 1\n",
             "jax_lora/tuners/prompt.py": "",
             "jax_lora/tuners/prefix.py": "from jax_lora.tuners import prompt\n"}
    graph = import_graph(write_package(tmp_path / "siblings", files))
    assert graph["jax_lora.tuners.prefix"] == {"jax_lora.tuners.prompt"}
    assert a_cycle(graph) is None
    files["jax_lora/tuners/prompt.py"] = "def read():\n    from jax_lora.tuners import Tuning\n"
    graph = import_graph(write_package(tmp_path / "registry", files))
    assert set(a_cycle(graph)) == {"jax_lora.tuners", "jax_lora.tuners.prompt"}
