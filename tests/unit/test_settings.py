"""Settings: contradictions refused at start naming the variables; keys checked; Redis TLS options."""

from __future__ import annotations

import base64
import ssl
from pathlib import Path

import pytest

from bpx_worker.config.celery import celery_settings
from bpx_worker.config.settings import Settings, load
from bpx_worker.errors import ConfigurationError
from bpx_worker.exchange.signer import Signer

PASSWORD = "s3cret-redis-pw"


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """Each test sees only the variables it sets."""
    for name in Settings.model_fields:
        monkeypatch.delenv(name.upper(), raising=False)


def refused(monkeypatch: pytest.MonkeyPatch, **env: str) -> str:
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    with pytest.raises(ConfigurationError) as caught:
        load()
    return str(caught.value)


def loaded(monkeypatch: pytest.MonkeyPatch, **env: str) -> Settings:
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    return load()


# --- time limits (issue: settings accept contradictions) -------------------------------------


def test_read_timeout_longer_than_the_soft_time_limit_is_refused_naming_the_variables(monkeypatch):
    message = refused(monkeypatch, LEASE_TTL="6")  # soft limit 3.6 s; default timeouts 3.05 + 10 s
    assert "HTTP_CONNECT_TIMEOUT + HTTP_READ_TIMEOUT" in message
    assert "LEASE_TTL" in message


def test_connect_plus_read_timeout_must_fit_the_soft_limit_not_only_the_read_timeout(monkeypatch):
    # 3.05 + 3 = 6.05 s does not fit in the 6 s soft limit of LEASE_TTL=10, although 3 s alone would.
    assert "HTTP_CONNECT_TIMEOUT" in refused(monkeypatch, LEASE_TTL="10", HTTP_READ_TIMEOUT="3")


def test_timeouts_that_fit_the_soft_time_limit_are_accepted(monkeypatch):
    s = loaded(monkeypatch, LEASE_TTL="6", HTTP_CONNECT_TIMEOUT="1", HTTP_READ_TIMEOUT="1.5")
    assert s.task_soft_time_limit == pytest.approx(3.6)


@pytest.mark.parametrize("lease", ["1", "2", "3", "6", "15", "60"])
def test_the_hard_time_limit_never_outlives_the_lease(monkeypatch, lease):
    s = loaded(monkeypatch, LEASE_TTL=lease, HTTP_CONNECT_TIMEOUT="0.1", HTTP_READ_TIMEOUT="0.4")
    conf = celery_settings(s)
    assert conf["task_soft_time_limit"] < conf["task_time_limit"] < s.lease_ttl
    assert s.http_connect_timeout + s.http_read_timeout < conf["task_soft_time_limit"]


def test_default_settings_hold_together(monkeypatch):
    s = load()
    conf = celery_settings(s)
    assert (conf["task_soft_time_limit"], conf["task_time_limit"]) == (36, 48)


# --- other contradictions ---------------------------------------------------------------------


@pytest.mark.parametrize("env, names", [
    ({"RECONCILE_MAX_DELAY": "900"}, ["RECONCILE_MAX_DELAY", "VISIBILITY_TIMEOUT"]),
    ({"RETRY_MAX_DELAY": "901"}, ["RETRY_MAX_DELAY", "VISIBILITY_TIMEOUT"]),
    ({"RETRY_INITIAL_DELAY": "40"}, ["RETRY_INITIAL_DELAY", "RETRY_MAX_DELAY"]),
    ({"RECONCILE_INITIAL_DELAY": "31"}, ["RECONCILE_INITIAL_DELAY", "RECONCILE_MAX_DELAY"]),
    ({"LEASE_TTL": "900"}, ["LEASE_TTL", "VISIBILITY_TIMEOUT"]),
    ({"STALL_AFTER": "900"}, ["STALL_AFTER", "VISIBILITY_TIMEOUT"]),
    ({"BACKPACK_API_SECRET": "x", "BACKPACK_API_SECRET_FILE": "/x"}, ["BACKPACK_API_SECRET", "_FILE", "not both"]),
    ({"BACKPACK_API_KEY": "x", "BACKPACK_API_KEY_FILE": "/x"}, ["BACKPACK_API_KEY", "not both"]),
])
def test_contradictions_are_refused_naming_the_variables(monkeypatch, env, names):
    message = refused(monkeypatch, **env)
    for name in names:
        assert name in message


def test_every_contradiction_is_reported_at_once(monkeypatch):
    message = refused(monkeypatch, LEASE_TTL="6", STALL_AFTER="100", RETRY_INITIAL_DELAY="40")
    assert "HTTP_READ_TIMEOUT" in message and "STALL_AFTER" in message and "RETRY_INITIAL_DELAY" in message


def test_an_unknown_log_level_is_refused_naming_it(monkeypatch):
    assert "LOG_LEVEL" in refused(monkeypatch, LOG_LEVEL="verbose")


# --- Redis URL, credentials and TLS ------------------------------------------------------------


def test_the_redis_password_is_not_in_the_settings_repr(monkeypatch):
    s = loaded(monkeypatch, REDIS_URL=f"redis://:{PASSWORD}@db.internal:6379/0")
    assert PASSWORD not in repr(s) and PASSWORD not in str(s)


def test_a_bad_redis_url_is_refused_without_repeating_it(monkeypatch):
    message = refused(monkeypatch, REDIS_URL=f"http://user:{PASSWORD}@db.internal:6379/0")
    assert "REDIS_URL" in message and PASSWORD not in message


def test_plain_redis_gets_no_tls_options(monkeypatch):
    s = loaded(monkeypatch, REDIS_URL=f"redis://:{PASSWORD}@h:6379/0")
    assert s.redis_ssl_options() == {}
    conf = celery_settings(s)
    assert not conf["broker_use_ssl"] and not conf["redis_backend_use_ssl"]


def test_rediss_verifies_the_server_for_broker_backend_and_store(monkeypatch, tmp_path: Path):
    ca, cert, key = (tmp_path / name for name in ("ca.pem", "client.pem", "client.key"))
    for path in (ca, cert, key):
        path.write_text("-----BEGIN-----\n")
    s = loaded(monkeypatch, REDIS_URL=f"rediss://app:{PASSWORD}@h:6380/0", REDIS_CA_FILE=str(ca),
               REDIS_CERT_FILE=str(cert), REDIS_KEY_FILE=str(key))
    expected = {"ssl_cert_reqs": ssl.CERT_REQUIRED, "ssl_ca_certs": str(ca), "ssl_certfile": str(cert),
                "ssl_keyfile": str(key)}
    assert s.redis_ssl_options() == expected
    conf = celery_settings(s)
    assert conf["broker_use_ssl"] == expected and conf["redis_backend_use_ssl"] == expected


def test_rediss_without_a_ca_file_still_verifies_with_the_system_cas(monkeypatch):
    s = loaded(monkeypatch, REDIS_URL="rediss://h:6380/0")
    assert s.redis_ssl_options() == {"ssl_cert_reqs": ssl.CERT_REQUIRED}


def test_tls_files_with_a_plain_redis_url_are_refused(monkeypatch, tmp_path: Path):
    (tmp_path / "ca.pem").write_text("x")
    message = refused(monkeypatch, REDIS_URL="redis://h:6379/0", REDIS_CA_FILE=str(tmp_path / "ca.pem"))
    assert "REDIS_CA_FILE" in message and "rediss://" in message


def test_a_missing_ca_file_is_refused_naming_it(monkeypatch, tmp_path: Path):
    assert "REDIS_CA_FILE" in refused(monkeypatch, REDIS_URL="rediss://h:6380/0",
                                      REDIS_CA_FILE=str(tmp_path / "missing.pem"))


def test_a_client_certificate_needs_its_key(monkeypatch, tmp_path: Path):
    (tmp_path / "c.pem").write_text("x")
    message = refused(monkeypatch, REDIS_URL="rediss://h:6380/0", REDIS_CERT_FILE=str(tmp_path / "c.pem"))
    assert "REDIS_CERT_FILE" in message and "REDIS_KEY_FILE" in message


# --- keys: what a worker checks at start ------------------------------------------------------


def _pair() -> tuple[str, str]:
    signer, secret = Signer.generate()
    return signer.api_key, secret


def test_missing_keys_name_the_variable(monkeypatch):
    s = load()
    with pytest.raises(ConfigurationError, match="BACKPACK_API_KEY"):
        s.api_key()
    with pytest.raises(ConfigurationError, match="BACKPACK_API_SECRET"):
        s.api_secret()


@pytest.mark.parametrize("value, reason", [
    ("not base64!", "not valid base64"),
    (base64.b64encode(b"short").decode(), "32 bytes"),
])
def test_a_malformed_secret_is_refused_naming_the_variable_without_its_value(monkeypatch, value, reason):
    s = loaded(monkeypatch, BACKPACK_API_SECRET=value)
    with pytest.raises(ConfigurationError) as caught:
        s.api_secret()
    assert "BACKPACK_API_SECRET" in str(caught.value) and reason in str(caught.value)
    assert value not in str(caught.value)


def test_an_unreadable_secret_file_names_the_file_variable(monkeypatch, tmp_path: Path):
    s = loaded(monkeypatch, BACKPACK_API_SECRET_FILE=str(tmp_path / "absent"))
    with pytest.raises(ConfigurationError, match="BACKPACK_API_SECRET_FILE"):
        s.api_secret()


def test_a_secret_file_with_a_malformed_key_names_the_file_variable(monkeypatch, tmp_path: Path):
    (tmp_path / "secret").write_text("@@@@\n")
    s = loaded(monkeypatch, BACKPACK_API_SECRET_FILE=str(tmp_path / "secret"))
    with pytest.raises(ConfigurationError, match="BACKPACK_API_SECRET_FILE: not valid base64"):
        s.api_secret()


def test_well_formed_keys_are_returned(monkeypatch, tmp_path: Path):
    api_key, secret = _pair()
    (tmp_path / "secret").write_text(secret + "\n")
    s = loaded(monkeypatch, BACKPACK_API_KEY=api_key, BACKPACK_API_SECRET_FILE=str(tmp_path / "secret"))
    assert (s.api_key(), s.api_secret()) == (api_key, secret)

