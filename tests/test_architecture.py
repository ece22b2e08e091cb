"""The layout's rules, read from the code with `ast` (every import, inside functions too):
no import cycle; inference does not import training; only training/ and the CLI import training/."""

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
MODULES = {  # dotted name -> file, for every module of the package
    ".".join((p.parent if p.stem == "__init__" else p.with_suffix("")).relative_to(ROOT).parts): p
    for p in (ROOT / "scratch_gpt").rglob("*.py")
}
def inside(name: str, package: str) -> bool:  # the package itself or one of its modules
    return name == package or name.startswith(package + ".")


def imported_names(module: str) -> set[str]:
    """What `module` imports: `import a.b` -> a.b, `from a import b` -> a.b (relative ones resolved)."""
    package = module if MODULES[module].name == "__init__.py" else module.rpartition(".")[0]
    names = set()
    for node in ast.walk(ast.parse(MODULES[module].read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            names |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parent = ".".join(package.split(".")[: len(package.split(".")) - node.level + 1])
                base = f"{parent}.{base}" if base else parent
            names |= {f"{base}.{alias.name}" for alias in node.names}
    return names


def defining_module(name: str) -> str | None:
    """The package's module that `name` is, or that defines it (None: not the package's)."""
    while name and name not in MODULES:
        name = name.rpartition(".")[0]
    return name or None


def find_cycle(graph: dict[str, set[str]]) -> list[str]:
    """One import cycle as [a, b, ..., a], or [] when there is none (depth-first search)."""
    done, path = set(), []

    def visit(module: str) -> list[str]:
        path.append(module)
        for target in sorted(graph[module] - done):
            if target in path:
                return path[path.index(target) :] + [target]
            if cycle := visit(target):
                return cycle
        done.add(path.pop())
        return []

    return next((cycle for module in sorted(graph) if module not in done and (cycle := visit(module))), [])


def training_imports(modules) -> set[tuple[str, str]]:  # (importer, imported name)
    return {(m, name) for m in modules for name in imported_names(m) if inside(name, "scratch_gpt.training")}


def test_the_package_has_no_import_cycle():
    graph = {module: {defining_module(n) for n in imported_names(module)} - {None, module} for module in MODULES}
    assert not (cycle := find_cycle(graph)), "import cycle: " + " -> ".join(cycle)


def test_inference_does_not_import_training():
    assert sorted(training_imports(m for m in MODULES if inside(m, "scratch_gpt.inference"))) == []


def test_only_training_and_the_cli_import_training():
    outside = [m for m in MODULES if not inside(m, "scratch_gpt.training") and not inside(m, "scratch_gpt.cli")]
    assert sorted(training_imports(outside)) == []
