"""Installed beside another code base: the wheel ships one package, `bpx_worker`, and a host application
with its own `config` and `tasks` packages installs it and calls the Python API without losing either.

The wheel is built from the working tree and installed into a fresh virtual environment; its
dependencies come from this project's environment through a `.pth` line (no network, and the
editable install's import hook there is not run, so only the wheel provides `bpx_worker`).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import sysconfig
import uuid
import zipfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from devtools.local import PrivateRedis
from devtools.package import ROOT, build_wheel, package_dirs, source_files

# Run by the host application's own interpreter, from the host's folder (so its packages come first).
HOST_APP = '''
import json
import os
import sys

import config            # the host's, imported before the product
import config.settings
from bpx_worker.errors import InvalidRequest
from bpx_worker.interfaces.api import get_job, submit_withdrawal
import tasks             # the host's, imported after the product

import bpx_worker
import bpx_worker.config

try:
    submit_withdrawal("USDC", "Solana", "5ZWj7a1f8tWkjBESHKgrLmXshuXxqeY9SYcfbshpAqPG", "-1")
    refused = None
except InvalidRequest as error:
    refused = sorted(error.errors)

job_id = submit_withdrawal("USDC", "Solana", "5ZWj7a1f8tWkjBESHKgrLmXshuXxqeY9SYcfbshpAqPG", "1",
                           idempotency_key=os.environ["HOST_KEY"])
print(json.dumps({
    "markers": [config.MARKER, config.settings.MARKER, tasks.MARKER],
    "host_files": [sys.modules[name].__file__ for name in ("config", "config.settings", "tasks")],
    "other_host_named_modules": sorted(
        name for name in sys.modules
        if name.split(".")[0] in ("config", "tasks") and name not in ("config", "config.settings", "tasks")),
    "bpx_worker_file": bpx_worker.__file__,
    "bpx_worker_config_file": bpx_worker.config.__file__,
    "refused_fields": refused,
    "job_state": get_job(job_id).state.value,
}))
'''


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_wheel(tmp_path_factory.mktemp("dist"))


@pytest.fixture(scope="module")
def redis_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    # Always a private Redis, even when REDIS_URL is set: a worker listening there (the session's stack)
    # would take the job this test submits and leaves queued.
    server = PrivateRedis(tmp_path_factory.mktemp("redis")).start()
    try:
        yield server.url
    finally:
        server.stop()


def _installed_venv(wheel: Path, directory: Path) -> Path:
    """A fresh venv holding only the wheel; dependencies resolve from this project's environment."""
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(directory)], check=True)
    python = directory / "bin" / "python"
    subprocess.run(
        [sys.executable, "-m", "pip", "--python", str(python), "install", "--quiet", "--no-deps", "--no-index",
         "--disable-pip-version-check", str(wheel)],
        check=True,
    )
    purelib = subprocess.run(
        [str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
        check=True, capture_output=True, text=True,
    ).stdout.strip()
    ours = {sysconfig.get_paths()["purelib"], sysconfig.get_paths()["platlib"]}
    # A plain path line: the directory joins sys.path, but its own .pth files (the editable hook) do not run.
    (Path(purelib) / "project-dependencies.pth").write_text("".join(f"{path}\n" for path in sorted(ours)))
    return python


def _host_application(directory: Path) -> Path:
    for package, marker in (("config", "host config"), ("tasks", "host tasks")):
        (directory / package).mkdir(parents=True)
        (directory / package / "__init__.py").write_text(f"MARKER = {marker!r}\n")
    (directory / "config" / "settings.py").write_text("MARKER = 'host settings'\n")
    (directory / "app.py").write_text(HOST_APP)
    return directory


def test_wheel_ships_one_package_and_no_development_tools(wheel: Path) -> None:
    with zipfile.ZipFile(wheel) as archive:
        top_level = {name.split("/")[0] for name in archive.namelist()}
    assert {name for name in top_level if not name.endswith(".dist-info")} == {"bpx_worker"}


def test_wheel_ships_every_module_and_workflow_document(wheel: Path) -> None:
    folders = {folder: package.replace(".", "/") for package, folder in package_dirs().items()}
    expected = set()
    for path in source_files():
        if path.suffix not in (".py", ".yml", ".yaml"):
            continue
        # The deepest folder that maps to a package: tasks/x.py -> bpx_worker/tasks/x.py.
        for folder in sorted(folders, key=len, reverse=True):
            if path.parts[: len(Path(folder).parts)] == Path(folder).parts:
                expected.add(f"{folders[folder]}/{path.relative_to(folder).as_posix()}")
                break
    with zipfile.ZipFile(wheel) as archive:
        shipped = set(archive.namelist())
    assert any(name.startswith("bpx_worker/config/workflows/arazzo/") for name in expected)
    assert sorted(expected - shipped) == []


def test_host_with_own_config_and_tasks_calls_the_api_and_keeps_its_packages(
        wheel: Path, redis_url: str, tmp_path: Path) -> None:
    python = _installed_venv(wheel, tmp_path / "venv")
    host = _host_application(tmp_path / "host")
    env = {name: value for name, value in os.environ.items() if not name.startswith(("PYTHON", "BACKPACK_"))}
    env.update(REDIS_URL=redis_url, HOST_KEY=f"install-beside-{uuid.uuid4().hex}")

    result = subprocess.run([str(python), "app.py"], cwd=host, env=env, capture_output=True, text=True,
                            timeout=120, check=False)

    assert result.returncode == 0, result.stderr
    seen = json.loads(result.stdout.strip().splitlines()[-1])
    assert seen["markers"] == ["host config", "host settings", "host tasks"]
    assert all(Path(file).is_relative_to(host) for file in seen["host_files"]), seen["host_files"]
    assert seen["other_host_named_modules"] == []
    # The product came from the wheel in the fresh venv, not from this source tree.
    for file in (seen["bpx_worker_file"], seen["bpx_worker_config_file"]):
        assert Path(file).is_relative_to(tmp_path / "venv"), file
        assert not Path(file).is_relative_to(ROOT), file
    assert seen["refused_fields"] == ["quantity"]
    assert seen["job_state"] == "queued"
