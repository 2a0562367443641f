"""Errors at the job store boundary, the CLI's exit-code table, and URL passwords kept out of output."""

from __future__ import annotations

import inspect
import logging
import re
import socket
from pathlib import Path

import pytest
import redis
import structlog

from bpx_worker import logs
from bpx_worker.errors import JobError, ServiceUnavailable, WorkerError
from bpx_worker.interfaces import cli, common
from bpx_worker.jobs.base import Lease
from bpx_worker.jobs.store import RedisJobStore

OPERATORS_DOC = Path(__file__).resolve().parents[2] / "docs" / "operators.md"
PASSWORD = "pw-Never-Shown-42"


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


# --- the job store boundary ---------------------------------------------------------------------


def test_every_public_store_method_is_behind_the_error_mapping():
    public = [name for name, member in vars(RedisJobStore).items()
              if not name.startswith("_") and inspect.isfunction(member)]
    assert public, "JobStore has public methods"
    for name in public:
        assert hasattr(getattr(RedisJobStore, name), "__wrapped__"), f"RedisJobStore.{name} lets redis errors through"


@pytest.fixture
def unreachable_store() -> RedisJobStore:
    return RedisJobStore.from_url(f"redis://:{PASSWORD}@127.0.0.1:{closed_port()}/0", 60, 1.0, retries=0)


@pytest.mark.parametrize("call", [
    lambda s: s.get("j"),
    lambda s: s.require("j"),
    lambda s: s.create("k", "wd-k", {}),
    lambda s: s.events("j"),
    lambda s: s.stalled(10),
    lambda s: s.acquire("j", 5),
    lambda s: s.update(Lease("j", "h", 1), lambda record: None),
])
def test_an_unreachable_redis_is_service_unavailable_without_the_password(unreachable_store, call):
    with pytest.raises(ServiceUnavailable) as caught:
        call(unreachable_store)
    message = str(caught.value)
    assert "127.0.0.1" in message and "unavailable" in message
    assert PASSWORD not in message
    assert isinstance(caught.value.__cause__, redis.ConnectionError)
    # Not a JobError: `status` must not read "Redis down" as "no such job".
    assert isinstance(caught.value, WorkerError) and not isinstance(caught.value, JobError)


# --- exit codes ---------------------------------------------------------------------------------


def _documented_exit_codes() -> dict[int, str]:
    section = OPERATORS_DOC.read_text().split("### Exit codes", 1)[1].split("\n#", 1)[0]
    rows = re.findall(r"^\| (\d+) \| (.+?) \|$", section, re.MULTILINE)
    return {int(code): meaning for code, meaning in rows}


def test_the_documented_exit_code_table_mirrors_the_cli():
    assert _documented_exit_codes() == common.EXIT_CODES


def test_exit_codes_are_distinct_and_service_unavailable_is_not_failed():
    codes = [common.EXIT_OK, common.EXIT_FAILED, common.EXIT_USAGE, common.EXIT_NEEDS_REVIEW, common.EXIT_NOT_FOUND,
             common.EXIT_CONFLICT, common.EXIT_REFUSED, common.EXIT_FINDINGS, common.EXIT_UNAVAILABLE,
             common.EXIT_SOFTWARE, common.EXIT_TIMEOUT, common.EXIT_CONFIG]
    assert len(set(codes)) == len(codes) and set(codes) == set(common.EXIT_CODES)
    assert (common.EXIT_UNAVAILABLE, common.EXIT_CONFIG) == (69, 78)


@pytest.mark.parametrize("error, code", [
    (ServiceUnavailable("x"), 69),
    (redis.ConnectionError("x"), 69),
    (redis.AuthenticationError("x"), 69),
    (__import__("kombu").exceptions.OperationalError("x"), 69),
    (__import__("bpx_worker.errors").errors.ConfigurationError("x"), 78),
    (ValueError("x"), None),
])
def test_errors_map_to_exit_codes(error, code):
    assert cli._exit_for(error) == code


# --- URL passwords ------------------------------------------------------------------------------


@pytest.mark.parametrize("text, shown", [
    (f"redis://:{PASSWORD}@h:6379/0", "redis://:***@h:6379/0"),
    (f"rediss://app:{PASSWORD}@h:6380/0 then redis://h:1/0", "rediss://app:***@h:6380/0 then redis://h:1/0"),
    (f"at redis://:p@ss{PASSWORD}@h/0.", "at redis://:***@h/0."),
    ("redis://h:6379/0 and someone@example.com", "redis://h:6379/0 and someone@example.com"),
    ("no url at 12:30 @ noon", "no url at 12:30 @ noon"),
])
def test_hide_credentials_replaces_only_url_passwords(text, shown):
    assert logs.hide_credentials(text) == shown


def test_log_lines_and_tracebacks_never_show_a_url_password(capsys):
    root = logging.getLogger()
    saved = root.handlers[:], root.level
    try:
        logs.configure("INFO", "json")
        log = structlog.get_logger("test")
        try:
            raise ConnectionError(f"cannot reach redis://:{PASSWORD}@h:6379/0")
        except ConnectionError:
            log.exception("broker down", url=f"redis://:{PASSWORD}@h:6379/0")
        logging.getLogger("celery").warning("Cannot connect to rediss://u:%s@h:6380/0", PASSWORD)
    finally:
        root.handlers[:], _ = saved
        root.setLevel(saved[1])
        structlog.reset_defaults()
    err = capsys.readouterr().err
    assert "broker down" in err and "Cannot connect" in err and "***@h" in err
    assert PASSWORD not in err
