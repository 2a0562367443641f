"""The package as it ships: the wheel built from the working tree, and its files mapped back to source.

`bpx_worker` is assembled by setuptools' `package-dir` from three folders (worker/, tasks/, config/), so
no folder of the source tree is importable under that name, and the editable install's import hook is
invisible to static checkers. mypy and import-linter therefore read the tree the wheel ships, and the
install-beside test installs that wheel. Checking the shipped tree has a bonus: a sub-package left out of
pyproject's package list is a missing import there, as it would be in production.

The wheel is built from a copy of the files git would keep (tracked and new, not ignored), so stale
setuptools output in build/ never leaks into it and the source tree is not written to.

    python -m devtools.package tree .lint-build            # unpack the wheel into .lint-build/
    python -m devtools.package mypy .lint-build devtools   # mypy on that tree, paths printed as source paths
    python -m devtools.package cycles .lint-build          # every import cycle between modules, listed
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tempfile
import tomllib
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def package_dirs(root: Path = ROOT) -> dict[str, str]:
    """Import package -> source folder, from pyproject's `[tool.setuptools] package-dir`."""
    with (root / "pyproject.toml").open("rb") as handle:
        setuptools = tomllib.load(handle)["tool"]["setuptools"]
    return dict(setuptools.get("package-dir", {}))


def source_files(root: Path = ROOT) -> list[Path]:
    """The files a fresh clone plus uncommitted work would have: tracked and untracked, minus ignored."""
    listed = subprocess.run(
        ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
        cwd=root, check=True, capture_output=True,
    ).stdout.decode()
    # A tracked file deleted in the working tree is still listed; it is not part of the build.
    return [Path(name) for name in listed.split("\0") if name and (root / name).is_file()]


def build_wheel(out_dir: Path, root: Path = ROOT) -> Path:
    """Build the project's wheel (no dependencies, no network) into `out_dir`; returns its path."""
    out_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="bpx-wheel-") as scratch:
        source = Path(scratch) / "src"
        for name in source_files(root):
            (source / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(root / name, source / name)
        subprocess.run(
            [sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "--no-build-isolation", "--no-index",
             "--disable-pip-version-check", "--wheel-dir", str(out_dir), str(source)],
            check=True,
        )
    wheels = sorted(out_dir.glob("*.whl"), key=lambda path: path.stat().st_mtime)
    if not wheels:
        raise RuntimeError(f"pip wheel wrote no wheel into {out_dir}")
    return wheels[-1]


def unpack_tree(target: Path, root: Path = ROOT) -> Path:
    """Replace `target` with the unpacked wheel of the working tree; returns `target`."""
    shutil.rmtree(target, ignore_errors=True)
    with tempfile.TemporaryDirectory(prefix="bpx-dist-") as dist:
        wheel = build_wheel(Path(dist), root)
        with zipfile.ZipFile(wheel) as archive:
            archive.extractall(target)
    return target


def to_source_path(path: str, tree: str, root: Path = ROOT) -> str:
    """`.lint-build/bpx_worker/tasks/app.py` -> `tasks/app.py`; other paths unchanged."""
    prefix = tree.rstrip("/") + "/"
    if not path.startswith(prefix):
        return path
    module_path = path[len(prefix):]
    # Longest package first: bpx_worker.tasks lives in tasks/, not in worker/tasks/.
    for package, folder in sorted(package_dirs(root).items(), key=lambda item: -len(item[0])):
        package_path = package.replace(".", "/") + "/"
        if module_path.startswith(package_path):
            return (folder.rstrip("/") + "/" if folder else "") + module_path[len(package_path):]
    return path


def run_mypy(tree: Path, extra: list[str], root: Path = ROOT) -> int:
    """mypy on the unpacked package plus `extra` paths; its output with source paths; its exit code."""
    package = min(package_dirs(root), key=len)  # the root import package, bpx_worker
    result = subprocess.run(
        [sys.executable, "-m", "mypy", str(tree / package), *extra],
        cwd=root, capture_output=True, text=True, check=False,
    )
    for line in result.stdout.splitlines():
        path, sep, rest = line.partition(":")
        print(to_source_path(path, str(tree)) + sep + rest if sep else line)
    sys.stderr.write(result.stderr)
    return result.returncode


def import_cycles(tree: Path, root: Path = ROOT) -> list[list[str]]:
    """The import cycles among the package's modules (strongly connected components), each sorted.

    import-linter's `acyclic_siblings` contract finds cycles between siblings at every depth; this also
    finds a module importing its own package's `__init__` that imports it back, and names every module
    of a cycle. Imports inside functions and under TYPE_CHECKING count: they are dependencies too.
    """
    import grimp  # the lint extra; imported here so the rest of this module needs only the standard library

    sys.path.insert(0, str(tree.resolve()))
    try:
        graph = grimp.build_graph(min(package_dirs(root), key=len), cache_dir=None)
    finally:
        sys.path.remove(str(tree.resolve()))
    imports = {module: sorted(graph.find_modules_directly_imported_by(module)) for module in sorted(graph.modules)}
    # Tarjan's algorithm, iterative so a deep chain cannot hit the recursion limit.
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    cycles: list[list[str]] = []
    for start in imports:
        if start in index:
            continue
        work = [(start, 0)]
        while work:
            module, position = work.pop()
            if position == 0:
                index[module] = low[module] = len(index)
                stack.append(module)
                on_stack.add(module)
            targets = imports[module]
            if position < len(targets):
                work.append((module, position + 1))
                target = targets[position]
                if target not in index:
                    work.append((target, 0))
                elif target in on_stack:
                    low[module] = min(low[module], index[target])
                continue
            for target in targets:
                if target in on_stack:
                    low[module] = min(low[module], low[target])
            if low[module] == index[module]:
                component = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.append(member)
                    if member == module:
                        break
                if len(component) > 1 or module in imports[module]:
                    cycles.append(sorted(component))
    return sorted(cycles)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m devtools.package", description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)
    tree = commands.add_parser("tree", help="unpack the wheel of the working tree into a folder")
    tree.add_argument("target", type=Path)
    mypy = commands.add_parser("mypy", help="run mypy on an unpacked tree, printing source paths")
    mypy.add_argument("tree", type=Path)
    mypy.add_argument("extra", nargs="*", help="more paths to check (e.g. devtools)")
    cycles = commands.add_parser("cycles", help="list the import cycles between the modules of an unpacked tree")
    cycles.add_argument("tree", type=Path)
    args = parser.parse_args(argv)
    if args.command == "tree":
        unpack_tree(args.target)
        return 0
    if args.command == "mypy":
        return run_mypy(args.tree, args.extra)
    found = import_cycles(args.tree)
    for cycle in found:
        print("import cycle: " + " <-> ".join(cycle))
    print(f"{len(found)} import cycle(s) between modules")
    return 1 if found else 0


if __name__ == "__main__":
    sys.exit(main())
