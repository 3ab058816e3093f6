"""The import contract of docs/architecture.md: layers point one way.

    cli -> run / serve / sweep / inspect / views -> machines (mesh, prefill, link)
        -> compiler -> isa -> emulator.hw (+ the leaf utilities emulator.jit, emulator.files,
          emulator.outputs, emulator.limits)

Every `import` and `from ... import` in the package (at any depth, including imports inside
functions) is read with `ast` and checked against the rooms each room may import. A failure
lists every wrong-way import as `file:line: room imports module`.
"""

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("emulator", "isa", "compiler")

LEAVES = {"hw", "leaf"}
MACHINES = {"mesh", "prefill", "link"}
UPPER = {"run", "serve", "sweep", "inspect", "views"}
ALLOWED = {
    "hw": {"hw"},
    "leaf": {"hw", "leaf"},
    "isa": LEAVES | {"isa"},
    "compiler": LEAVES | {"isa", "compiler"},
    "mesh": LEAVES | {"isa", "compiler", "mesh"},
    "prefill": LEAVES | {"isa", "compiler", "prefill"},
    "link": LEAVES | {"isa", "compiler", "link"},
    **{room: LEAVES | {"isa", "compiler"} | MACHINES | UPPER for room in UPPER},
    "cli": LEAVES | {"isa", "compiler", "cli"} | MACHINES | UPPER,
    "package": {"package"},
}


def room_of(module: str) -> str | None:
    """The room of a dotted module name of ours (None: not ours)."""
    parts = module.split(".")
    if parts[0] in ("isa", "compiler"):
        return parts[0]
    if parts[0] != "emulator":
        return None
    if len(parts) == 1:
        return "package"
    sub = parts[1]
    if sub in ("jit", "files", "outputs", "limits"):
        return "leaf"
    if sub in ALLOWED:
        return sub
    if sub == "models":          # bundled model configs (data)
        return "leaf"
    raise AssertionError(f"module {module} is in no room of docs/architecture.md")


def module_name(path: Path) -> str:
    rel = path.relative_to(ROOT).with_suffix("")
    parts = rel.parts[:-1] if rel.name == "__init__" else rel.parts
    return ".".join(parts)


def imported_modules(tree: ast.AST, module: str, is_package: bool):
    """(line, absolute module) of every import in a module's syntax tree."""
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield node.lineno, alias.name
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = module.split(".")
                anchor = anchor if is_package else anchor[:-1]
                anchor = anchor[:len(anchor) - node.level + 1]
                base = ".".join(anchor + ([base] if base else []))
            if node.module is None or room_of(base) is not None:
                for alias in node.names:     # `from emulator import mesh` names a module
                    full = f"{base}.{alias.name}"
                    yield node.lineno, full if _is_module(full) else base
            else:
                yield node.lineno, base


def _is_module(dotted: str) -> bool:
    path = ROOT.joinpath(*dotted.split("."))
    return path.with_suffix(".py").exists() or (path / "__init__.py").exists()


def check_source(text: str, module: str, is_package: bool, shown: str) -> list[str]:
    """The wrong-way imports of one module's source, as `shown:line: room imports target`."""
    room = room_of(module)
    if room in (None, "cli"):
        return []
    bad = []
    for line, target in sorted(imported_modules(ast.parse(text, shown), module, is_package)):
        target_room = room_of(target)
        if target_room is not None and target_room not in ALLOWED[room]:
            bad.append(f"{shown}:{line}: {room} imports {target}")
    return bad


def violations(files) -> list[str]:
    """Every import in `files` that points the wrong way."""
    return [line for path in files
            for line in check_source(path.read_text(), module_name(path),
                                     path.name == "__init__.py", str(path.relative_to(ROOT)))]


def package_files():
    return sorted(p for pkg in PACKAGES for p in (ROOT / pkg).rglob("*.py"))


def test_layers_point_one_way():
    bad = violations(package_files())
    assert not bad, "wrong-way imports (docs/architecture.md):\n" + "\n".join(bad)


def test_nothing_outside_the_cli_imports_it():
    scripts = sorted((ROOT / "benchmarks").glob("*.py")) + sorted((ROOT / "docs").glob("*.py"))
    bad = []
    for path in package_files() + scripts + sorted((ROOT / "tests").glob("*.py")):
        if module_name(path).startswith("emulator.cli") or path.parent.name == "tests":
            continue
        tree = ast.parse(path.read_text(), str(path))
        for line, target in imported_modules(tree, module_name(path), False):
            if target.startswith("emulator.cli"):
                bad.append(f"{path.relative_to(ROOT)}:{line}: imports {target}")
    assert not bad, "only the CLI may import emulator.cli:\n" + "\n".join(bad)


def test_the_contract_catches_wrong_way_imports():
    source = ("from emulator.mesh.engine import run_numba\n"
              "def f():\n    import emulator.run\n"
              "from emulator import views\n"
              "from . import tile\n")
    assert check_source(source, "compiler.decode", False, "compiler/decode.py") == [
        "compiler/decode.py:1: compiler imports emulator.mesh.engine",
        "compiler/decode.py:3: compiler imports emulator.run",
        "compiler/decode.py:4: compiler imports emulator.views",
    ]
    assert check_source("from emulator.mesh import kernels\n", "emulator.prefill.run", False,
                        "p.py") == ["p.py:1: prefill imports emulator.mesh.kernels"]
    assert check_source("import emulator.hw.mesh\n", "isa.asm", False, "a.py") == []


def test_every_module_has_a_docstring():
    missing = [str(p.relative_to(ROOT)) for p in package_files()
               if ast.get_docstring(ast.parse(p.read_text())) is None]
    assert not missing, "modules without a docstring: " + ", ".join(missing)
