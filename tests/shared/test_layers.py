"""shared/'s layers as its package docstring lists them: each folder or file imports only those
listed before it (any import, also one inside a function), and the data layer nothing else of
the project. Read from the source with ast, so no test order or import cache can hide one."""

import ast
import re
from pathlib import Path

import shared

SHARED = Path(shared.__file__).parent


def layer_order() -> list[str]:
    """The names in shared/__init__.py's list, top to bottom: data, cli, runs, ..."""
    return re.findall(r"^    (\w+)(?:/|\.py)\s", shared.__doc__, flags=re.MULTILINE)


def layer_of(module: str) -> str:
    return module.split(".")[1]


def imported(path: Path) -> set[str]:
    """The modules of this project (shared, tf_baseline, jax_lora) that `path` imports."""
    names = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            names |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
    return {name for name in names if name.split(".")[0] in ("shared", "tf_baseline", "jax_lora")}


def test_each_layer_imports_only_those_before_it():
    order = layer_order()
    on_disk = {p.stem if p.is_file() else p.name for p in SHARED.iterdir()
               if (p.is_dir() and (p / "__init__.py").is_file())
               or (p.suffix == ".py" and p.stem != "__init__")}
    assert order[:2] == ["data", "cli"] and set(order) == on_disk, order
    upward = []
    for path in sorted(SHARED.rglob("*.py")):
        module = ".".join(path.relative_to(SHARED.parent).with_suffix("").parts)
        if module == "shared.__init__":
            continue
        rank = order.index(layer_of(module))
        for target in imported(path):
            if not target.startswith("shared.") or order.index(layer_of(target)) > rank:
                upward.append(f"{module} imports {target}")
    assert upward == []


def test_the_check_sees_an_upward_import(tmp_path):
    """The walker itself: an import inside a function counts."""
    path = tmp_path / "module.py"
    path.write_text("def main():\n    from shared.runs.run_dir import atomic_write_text\n")
    assert imported(path) == {"shared.runs.run_dir"}
