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


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m devtools.package", description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)
    tree = commands.add_parser("tree", help="unpack the wheel of the working tree into a folder")
    tree.add_argument("target", type=Path)
    mypy = commands.add_parser("mypy", help="run mypy on an unpacked tree, printing source paths")
    mypy.add_argument("tree", type=Path)
    mypy.add_argument("extra", nargs="*", help="more paths to check (e.g. devtools)")
    args = parser.parse_args(argv)
    if args.command == "tree":
        unpack_tree(args.target)
        return 0
    return run_mypy(args.tree, args.extra)


if __name__ == "__main__":
    sys.exit(main())
