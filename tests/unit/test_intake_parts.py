"""The pure parts of the intake, callbacks, metrics and logs: allow-list, signatures, tokens, settings."""

import hashlib
import hmac
import io
import pickle

import pytest

from bpx_worker.callbacks import signature, url_problem
from bpx_worker.config.settings import Settings, load
from bpx_worker.errors import ConfigurationError, JobEnded
from bpx_worker.interfaces.http import Tokens, decode_cursor, encode_cursor
from bpx_worker.logs import json_output


@pytest.mark.parametrize("url", [
    "http://hooks.internal/withdrawals",
    "https://HOOKS.internal:443/x?y=1",
    "http://127.0.0.1:8081/cb",
])
def test_callback_url_on_an_allowed_host_is_accepted(url):
    assert url_problem(url, frozenset({"hooks.internal", "127.0.0.1:8081"})) is None


@pytest.mark.parametrize("url, reason", [
    ("http://evil.example/x", "not on CALLBACK_ALLOWED_HOSTS"),
    ("http://127.0.0.1:9999/cb", "not on CALLBACK_ALLOWED_HOSTS"),  # the entry names another port
    ("http://hooks.internal.evil.example/", "not on CALLBACK_ALLOWED_HOSTS"),
    ("ftp://hooks.internal/x", "http or https"),
    ("hooks.internal/x", "http or https"),
    ("http://user:pw@hooks.internal/x", "credentials"),
    ("http://hooks.internal:99999/x", "http or https"),
    (12, "must be a string"),
    ("http://hooks.internal/" + "a" * 3000, "at most"),
])
def test_callback_url_elsewhere_is_refused_with_a_reason(url, reason):
    assert reason in url_problem(url, frozenset({"hooks.internal", "127.0.0.1:8081"}))


def test_no_callback_host_is_allowed_when_the_list_is_empty():
    assert "not enabled" in url_problem("http://127.0.0.1/cb", frozenset())


def test_signature_is_hmac_sha256_over_timestamp_dot_body():
    body = b'{"job":{}}'
    expected = hmac.new(b"k" * 20, b"1700000000." + body, hashlib.sha256).hexdigest()
    assert signature("k" * 20, 1700000000, body) == f"sha256={expected}"
    assert signature("k" * 20, 1700000001, body) != signature("k" * 20, 1700000000, body)


def test_tokens_name_the_caller_and_refuse_anything_else():
    tokens = Tokens({"payments": "p" * 20, "reports": "r" * 20})
    assert tokens.name_of("p" * 20) == "payments"
    assert tokens.name_of("r" * 20) == "reports"
    assert tokens.name_of("p" * 19) is None
    assert tokens.name_of("") is None
    assert tokens.name_of("ü" * 20) is None
    assert not Tokens({})


def test_named_secrets_are_parsed_and_bad_entries_never_echo_the_secret(monkeypatch):
    monkeypatch.setenv("INTAKE_TOKENS", "payments=abcdefghijklmnop0123, reports=ZYXWVUTSRQPONMLK==")
    assert Settings().intake_token_secrets() == {"payments": "abcdefghijklmnop0123", "reports": "ZYXWVUTSRQPONMLK=="}
    monkeypatch.setenv("INTAKE_TOKENS", "payments=short-secret")
    with pytest.raises(ConfigurationError, match="INTAKE_TOKENS") as caught:
        load()
    assert "short-secret" not in str(caught.value)
    monkeypatch.setenv("INTAKE_TOKENS", "no-equals-sign-here-0123456789")
    with pytest.raises(ConfigurationError, match="name=secret") as caught:
        load()
    assert "0123456789" not in str(caught.value)


def test_token_file_adds_to_the_variable_and_refuses_a_name_twice(monkeypatch, tmp_path):
    path = tmp_path / "tokens"
    path.write_text("# services\nbatch=fromthefile-0123456789\n")
    monkeypatch.setenv("INTAKE_TOKENS", "payments=abcdefghijklmnop0123")
    monkeypatch.setenv("INTAKE_TOKENS_FILE", str(path))
    assert Settings().intake_token_secrets() == {"payments": "abcdefghijklmnop0123",
                                                 "batch": "fromthefile-0123456789"}
    path.write_text("payments=fromthefile-0123456789\n")
    with pytest.raises(ConfigurationError, match="INTAKE_TOKENS_FILE: entry 'payments'"):
        Settings().intake_token_secrets()


def test_callback_delay_must_stay_below_the_visibility_timeout(monkeypatch):
    monkeypatch.setenv("VISIBILITY_TIMEOUT", "30")
    monkeypatch.setenv("CALLBACK_MAX_DELAY", "30")
    monkeypatch.setenv("RETRY_MAX_DELAY", "1")
    monkeypatch.setenv("RECONCILE_MAX_DELAY", "1")
    monkeypatch.setenv("LEASE_TTL", "10")
    with pytest.raises(ConfigurationError, match="VISIBILITY_TIMEOUT"):
        load()


def test_cursor_round_trips_and_garbage_is_refused():
    assert decode_cursor(encode_cursor("1700000000.123456:abcdef")) == "1700000000.123456:abcdef"
    assert encode_cursor(None) is None
    with pytest.raises(ValueError, match="not a cursor"):
        decode_cursor("%%%")


def test_job_ended_pickles_and_reads_with_its_code():
    error = pickle.loads(pickle.dumps(JobEnded("INSUFFICIENT_FUNDS", "failed", "job1")))  # noqa: S301 - our own
    assert (error.code, error.state, error.job_id) == ("INSUFFICIENT_FUNDS", "failed", "job1")
    assert str(error) == "INSUFFICIENT_FUNDS: job job1 ended failed"
    assert "INSUFFICIENT_FUNDS" in repr(error)


class _Tty(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_log_format_auto_is_json_unless_on_a_terminal():
    assert json_output("auto", io.StringIO()) is True
    assert json_output("auto", _Tty()) is False
    assert json_output("console", io.StringIO()) is False
    assert json_output("json", _Tty()) is True


def test_every_metric_the_example_alerts_use_is_one_the_code_exports():
    import re
    from pathlib import Path

    import prometheus_client

    from bpx_worker.metrics import RedisGauges, metrics

    metrics()  # made on first use
    exported = set(RedisGauges.NAMES)
    for family in prometheus_client.REGISTRY.collect():
        if family.name.startswith("bpxw_"):
            suffixes = {"counter": ("_total",), "histogram": ("_bucket", "_count", "_sum")}.get(family.type, ("",))
            exported |= {family.name + suffix for suffix in suffixes}
    rules = (Path(__file__).parents[2] / "deploy" / "alerts.yml").read_text()
    used = set(re.findall(r"\bbpxw_[a-z_]+", rules))
    assert used, "no metric found in the alert rules"
    assert used <= exported, used - exported
