"""The exchange sandbox, over real HTTP on a free port, with real signed requests."""

from __future__ import annotations

import json
import logging
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from decimal import Decimal
from pathlib import Path

import pytest
import requests

from bpx_worker.exchange.signer import Signer, signing_string
from devtools.sandbox import Faults, Sandbox, SandboxConfig

ROOT = Path(__file__).resolve().parents[2]
WD = "/wapi/v1/capital/withdrawals"
CAPITAL = "/api/v1/capital"
ADDRESS = "7YttLkHDoNj9wyDur5pM1ejNaAvT9X4eqaYcHQqtj2G5"


# --------------------------------------------------------------------------- helpers


def wait_for(condition, timeout: float = 5.0, interval: float = 0.05):
    """Poll `condition` until it returns something truthy; fail after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        result = condition()
        if result:
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {timeout}s")
        time.sleep(interval)


class Client:
    """Minimal signed client for the three endpoints (the worker has its own)."""

    def __init__(self, sandbox: Sandbox, signer: Signer):
        self.url, self.signer = sandbox.url, signer

    def balances(self, **kw) -> requests.Response:
        return requests.get(self.url + CAPITAL, headers=self.signer.headers("balanceQuery", {}), timeout=5, **kw)

    def withdraw(self, timeout: float = 5, **fields) -> requests.Response:
        body = {"address": ADDRESS, "blockchain": "Solana", "quantity": "1", "symbol": "USDC", **fields}
        body = {k: v for k, v in body.items() if v is not None}
        headers = self.signer.headers("withdraw", body)
        return requests.post(self.url + WD, json=body, headers=headers, timeout=timeout)

    def history(self, **params) -> requests.Response:
        params = {k: str(v) for k, v in params.items()}
        headers = self.signer.headers("withdrawalQueryAll", params)
        return requests.get(self.url + WD, params=params, headers=headers, timeout=5)

    def ledger(self) -> dict:
        return requests.get(self.url + "/_sandbox/ledger", timeout=5).json()

    def admin(self, what: str, body: dict) -> requests.Response:
        return requests.post(f"{self.url}/_sandbox/{what}", json=body, timeout=5)


@pytest.fixture(scope="module")
def signer() -> Signer:
    return Signer.generate()[0]


@pytest.fixture
def make_sandbox(signer):
    started: list[Sandbox] = []

    def make(**overrides) -> Sandbox:
        settings = dict(api_key=signer.api_key, balances={"USDC": Decimal("1000"), "SOL": Decimal("25")},
                        confirm_delay=0.4, history_lag=0.2)
        settings.update(overrides)
        sandbox = Sandbox(SandboxConfig(**settings))
        sandbox.start()
        started.append(sandbox)
        return sandbox

    yield make
    for sandbox in started:
        sandbox.stop()


@pytest.fixture
def sandbox(make_sandbox) -> Sandbox:
    return make_sandbox()


@pytest.fixture
def client(sandbox, signer) -> Client:
    return Client(sandbox, signer)


def in_history(client: Client, **filters):
    response = client.history(**filters)
    assert response.status_code == 200, response.text
    return response.json()


# --------------------------------------------------------------------------- balances and withdrawals


def test_balances_read(client):
    response = client.balances()
    assert response.status_code == 200
    assert response.headers["Content-Type"].startswith("application/json")
    assert response.json() == {
        "SOL": {"available": "25", "locked": "0", "staked": "0"},
        "USDC": {"available": "1000", "locked": "0", "staked": "0"},
    }


def test_withdrawal_debits_and_shows_in_history_only_after_the_lag(make_sandbox, signer):
    sandbox = make_sandbox(history_lag=0.8, confirm_delay=5)
    client = Client(sandbox, signer)
    response = client.withdraw(quantity="12.50", clientId="wd-0001", twoFactorToken="123456")
    assert response.status_code == 200, response.text
    w = response.json()
    assert w["id"] == 1 and w["clientId"] == "wd-0001" and w["quantity"] == "12.5"
    assert w["status"] == "pending" and w["fee"] == "0" and w["isInternal"] is False
    assert w["toAddress"] == ADDRESS and w["blockchain"] == "Solana" and w["symbol"] == "USDC"
    for name in ("identifier", "transactionHash", "triggerAt", "fiatFee", "fiatState", "fiatSymbol",
                 "providerId", "subaccountId", "bankName", "bankIdentifier", "accountIdentifier"):
        assert name in w and w[name] is None
    assert len(w["createdAt"]) == 23 and w["createdAt"][10] == "T" and w["createdAt"][19] == "."
    assert client.balances().json()["USDC"]["available"] == "987.5"

    assert in_history(client) == []  # not visible yet: clients must poll
    rows = wait_for(lambda: in_history(client))
    assert [r["id"] for r in rows] == [1]
    assert rows[0]["status"] == "pending"
    assert rows[0]["createdAt"] == w["createdAt"]


def test_status_goes_from_pending_to_confirmed(make_sandbox, signer):
    sandbox = make_sandbox(history_lag=0, confirm_delay=0.8)
    client = Client(sandbox, signer)
    wid = client.withdraw().json()["id"]
    first = in_history(client, id=wid)[0]
    assert first["status"] == "pending" and first["transactionHash"] is None
    confirmed = wait_for(lambda: [r for r in in_history(client, id=wid) if r["status"] == "confirmed"])[0]
    assert confirmed["transactionHash"] and confirmed["identifier"] == confirmed["transactionHash"]


def test_history_filters_and_order(make_sandbox, signer):
    sandbox = make_sandbox(history_lag=0)
    client = Client(sandbox, signer)
    for n in range(1, 6):
        assert client.withdraw(clientId=f"wd-{n}").status_code == 200
    assert [r["id"] for r in in_history(client)] == [5, 4, 3, 2, 1]  # newest first
    assert [r["id"] for r in in_history(client, id=3)] == [3]
    assert [r["clientId"] for r in in_history(client, clientId="wd-2")] == ["wd-2"]
    assert in_history(client, clientId="nope") == []
    assert [r["id"] for r in in_history(client, limit=2)] == [5, 4]
    assert [r["id"] for r in in_history(client, limit=2, offset=2)] == [3, 2]
    assert in_history(client, **{"from": int(time.time() * 1000) + 60_000}) == []
    assert len(in_history(client, to=int(time.time() * 1000) + 1000)) == 5
    too_many = client.history(limit=1001)
    assert too_many.status_code == 400 and too_many.json()["code"] == "INVALID_CLIENT_REQUEST"


def test_insufficient_funds_writes_nothing(client):
    before = client.ledger()
    for fields in ({"quantity": "1000.01"}, {"symbol": "BTC", "quantity": "0.1"}):
        response = client.withdraw(**fields)
        assert response.status_code == 400
        assert response.json() == {"code": "INSUFFICIENT_FUNDS", "message": "Insufficient funds"}
    after = client.ledger()
    assert after["balances"] == before["balances"] and after["withdrawals"] == []
    assert client.withdraw(quantity="1000").status_code == 200  # exactly the balance is fine
    assert client.balances().json()["USDC"]["available"] == "0"


def test_concurrent_withdrawals_never_overspend(make_sandbox, signer):
    sandbox = make_sandbox(balances={"USDC": Decimal("10")})
    client = Client(sandbox, signer)
    statuses: list[int | str] = []
    lock = threading.Lock()

    def one(n: int) -> None:
        try:
            code: int | str = client.withdraw(quantity="1", clientId=f"c-{n}").status_code
        except Exception as exc:  # noqa: BLE001 - shown in the assertion, not lost with the thread
            code = repr(exc)
        with lock:
            statuses.append(code)

    threads = [threading.Thread(target=one, args=(n,)) for n in range(16)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(statuses, key=str) == [200] * 10 + [400] * 6
    ledger = client.ledger()
    assert ledger["balances"]["USDC"]["available"] == "0"
    assert sorted(w["id"] for w in ledger["withdrawals"]) == list(range(1, 11))


def test_two_factor_token_is_never_stored_or_logged(make_sandbox, signer, tmp_path, caplog):
    caplog.set_level(logging.DEBUG, logger="devtools.sandbox")
    state = tmp_path / "state.json"
    client = Client(make_sandbox(state_file=state), signer)
    assert client.withdraw(twoFactorToken="SECRET-2FA-987654").status_code == 200
    assert client.withdraw().status_code == 200
    ledger = client.ledger()
    assert [w["twoFactorTokenProvided"] for w in ledger["withdrawals"]] == [True, False]
    assert "SECRET-2FA" not in json.dumps(ledger)
    assert "SECRET-2FA" not in state.read_text()
    assert "SECRET-2FA" not in caplog.text and signer.api_key not in caplog.text


# --------------------------------------------------------------------------- authentication and parsing


def _signed_raw(signer, instruction, params, timestamp, window):
    return {"X-API-KEY": signer.api_key, "X-TIMESTAMP": str(timestamp), "X-WINDOW": str(window),
            "X-SIGNATURE": signer.sign(signing_string(instruction, params, timestamp, window))}


def test_refused_requests_are_invalid_client_request(client, signer):
    url = client.url + CAPITAL
    now = int(time.time() * 1000)
    other = Signer.generate()[0]
    good = signer.headers("balanceQuery", {})
    cases = {
        "bad signature": {**good, "X-SIGNATURE": signer.headers("balanceQuery", {"x": "1"})["X-SIGNATURE"]},
        "wrong key": other.headers("balanceQuery", {}),
        "wrong key, our signature": {**good, "X-API-KEY": other.api_key},
        "expired": signer.headers("balanceQuery", {}, timestamp=now - 10_000, window=5000),
        "future": signer.headers("balanceQuery", {}, timestamp=now + 30_000, window=5000),
        "window over max": _signed_raw(signer, "balanceQuery", {}, now, 60_001),
        "window zero": _signed_raw(signer, "balanceQuery", {}, now, 0),
        "missing signature": {k: v for k, v in good.items() if k != "X-SIGNATURE"},
        "no headers": {},
    }
    messages = {}
    for name, headers in cases.items():
        response = requests.get(url, headers=headers, timeout=5)
        assert response.status_code == 400, name
        assert response.json()["code"] == "INVALID_CLIENT_REQUEST", name
        messages[name] = response.json()["message"]
    assert messages["bad signature"] == "Invalid signature"
    assert messages["expired"] == "Request has expired"
    # a withdrawal signed for other values is refused and writes nothing
    body = {"address": ADDRESS, "blockchain": "Solana", "quantity": "1", "symbol": "USDC"}
    headers = signer.headers("withdraw", {**body, "quantity": "0.5"})
    assert requests.post(client.url + WD, json=body, headers=headers, timeout=5).status_code == 400
    assert client.ledger()["withdrawals"] == []


def test_lowercase_headers_and_default_window(client, signer):
    now = int(time.time() * 1000)
    headers = {"x-api-key": signer.api_key, "x-timestamp": str(now),
               "x-signature": signer.sign(signing_string("balanceQuery", {}, now, 5000))}
    assert requests.get(client.url + CAPITAL, headers=headers, timeout=5).status_code == 200
    big_window = signer.headers("balanceQuery", {}, timestamp=now - 30_000, window=60_000)
    assert requests.get(client.url + CAPITAL, headers=big_window, timeout=5).status_code == 200


def test_parse_errors_are_plain_text_and_unknown_paths_404(client, signer):
    headers = signer.headers("withdraw", {})
    response = requests.post(client.url + WD, data=b"{not json", timeout=5,
                             headers={**headers, "Content-Type": "application/json"})
    assert response.status_code == 400
    assert response.headers["Content-Type"].startswith("text/plain")
    assert response.text.startswith("Bad Request parse request payload error:")

    for bad in ({"blockchain": "Narnia"}, {"quantity": "lots"}, {"address": None}, {"clientId": "x" * 256}):
        response = client.withdraw(**bad)
        assert response.status_code == 400 and response.headers["Content-Type"].startswith("text/plain"), bad
    assert client.withdraw(quantity="0").json()["code"] == "INVALID_QUANTITY"

    response = client.history(limit="abc")
    assert response.status_code == 400 and "`limit`" in response.text
    response = requests.get(client.url + "/api/v1/nothing", timeout=5)
    assert (response.status_code, response.text) == (404, "404 not found")
    assert client.ledger()["withdrawals"] == []


# --------------------------------------------------------------------------- fault injection


def test_fault_5xx_and_429_do_not_process(client):
    assert client.admin("faults", {"p_5xx": 1}).json()["p_5xx"] == 1
    response = client.withdraw()
    assert response.status_code == 503 and response.json()["code"] == "SERVER_ERROR"

    client.admin("faults", {"p_5xx": 0, "p_429": 1})
    response = client.withdraw()
    assert response.status_code == 429 and response.json()["code"] == "TOO_MANY_REQUESTS"
    assert response.headers["Retry-After"] == "1"
    assert client.balances().status_code == 429

    ledger = client.ledger()
    assert ledger["withdrawals"] == [] and ledger["balances"]["USDC"]["available"] == "1000"
    assert ledger["faults_injected"] == {"5xx": 1, "429": 2, "drop": 0, "commit_then_drop": 0}
    assert ledger["requests"]["POST /wapi/v1/capital/withdrawals"] == 2
    assert client.admin("faults", {"p_429": 1.5}).status_code == 400


def test_fault_latency(client):
    client.admin("faults", {"latency_ms": 300})
    started = time.monotonic()
    assert client.balances().status_code == 200
    assert time.monotonic() - started >= 0.3


def test_fault_drop_resets_before_processing(client):
    client.admin("faults", {"p_drop": 1})
    with pytest.raises(requests.ConnectionError):
        client.withdraw()
    with pytest.raises(requests.ConnectionError):
        client.balances()
    ledger = client.ledger()
    assert ledger["withdrawals"] == [] and ledger["faults_injected"]["drop"] == 2
    client.admin("faults", {"p_drop": 0})
    assert client.balances().status_code == 200  # the server survives resets


def test_fault_commit_then_drop_records_the_withdrawal(client):
    client.admin("faults", {"p_commit_then_drop": 1})
    assert client.balances().status_code == 200  # only POST withdrawals are affected
    with pytest.raises(requests.ConnectionError):
        client.withdraw(clientId="cd-1")
    ledger = client.ledger()
    assert [(w["id"], w["clientId"]) for w in ledger["withdrawals"]] == [(1, "cd-1")]
    assert ledger["balances"]["USDC"]["available"] == "999"
    assert ledger["faults_injected"]["commit_then_drop"] == 1
    client.admin("faults", {"p_commit_then_drop": 0})
    assert [r["clientId"] for r in wait_for(lambda: in_history(client, clientId="cd-1"))] == ["cd-1"]


def test_commit_then_drop_with_hang_gives_a_read_timeout(client):
    client.admin("faults", {"p_commit_then_drop": 1, "hang_ms": 600})
    with pytest.raises(requests.ReadTimeout):
        client.withdraw(timeout=0.2, clientId="hang-1")
    assert [w["clientId"] for w in client.ledger()["withdrawals"]] == ["hang-1"]


def test_seeded_faults_replay(make_sandbox, signer):
    def pattern() -> list[int]:
        sandbox = make_sandbox(faults=Faults(p_5xx=0.5, seed=42))
        client = Client(sandbox, signer)
        return [client.balances().status_code for _ in range(12)]

    first = pattern()
    assert first == pattern() and set(first) == {200, 503}


# --------------------------------------------------------------------------- admin


def test_admin_config_balances_reset_and_hold(client):
    assert client.admin("balances", {"USDC": "50", "ETH": "1.25"}).status_code == 200
    assert client.balances().json()["ETH"] == {"available": "1.25", "locked": "0", "staked": "0"}
    assert "SOL" not in client.balances().json()

    config = client.admin("config", {"hold_status": "ownershipVerificationRequired", "history_lag": 0}).json()
    assert config["hold_status"] == "ownershipVerificationRequired"
    held = client.withdraw().json()
    assert held["status"] == "ownershipVerificationRequired"
    assert in_history(client, id=held["id"])[0]["status"] == "ownershipVerificationRequired"
    client.admin("config", {"hold_status": None, "confirm_delay": 0})
    assert in_history(client, id=held["id"])[0]["status"] == "ownershipVerificationRequired"  # still held
    released = client.admin(f"withdrawals/{held['id']}", {"hold_status": None}).json()
    assert released["status"] in ("pending", "confirmed")  # back on its own confirm_delay clock
    wait_for(lambda: in_history(client, id=held["id"])[0]["status"] == "confirmed")
    assert client.admin("withdrawals/999", {"hold_status": None}).status_code == 404
    assert client.admin("config", {"confirm_delay": -1}).status_code == 400

    client.admin("faults", {"p_5xx": 0.5})
    reset = client.admin("reset", {}).json()
    assert reset["withdrawals"] == [] and reset["balances"]["USDC"]["available"] == "49"
    assert reset["config"]["faults"]["p_5xx"] == 0 and set(reset["requests"].values()) == {0}
    assert client.admin("reset", {"balances": {"USDC": "7"}}).json()["balances"]["USDC"]["available"] == "7"
    assert client.withdraw().json()["id"] == 1
    assert requests.get(client.url + "/_sandbox/health", timeout=5).json() == {"ok": True}


def test_ignore_filters_answers_the_history_as_if_id_and_client_id_were_not_filters(make_sandbox, signer):
    sandbox = make_sandbox(history_lag=0, ignore_filters=True)
    client = Client(sandbox, signer)
    for n in range(1, 4):
        assert client.withdraw(clientId=f"wd-{n}").status_code == 200
    assert [r["id"] for r in in_history(client, id=2)] == [3, 2, 1]
    assert [r["id"] for r in in_history(client, clientId="wd-1")] == [3, 2, 1]
    assert [r["id"] for r in in_history(client, id=2, limit=1, offset=1)] == [2]  # paging still works
    assert client.admin("config", {"ignore_filters": False}).json()["ignore_filters"] is False
    assert [r["id"] for r in in_history(client, id=2)] == [2]


def test_redirect_to_answers_every_exchange_request_with_a_redirect_and_processes_nothing(client, signer):
    assert client.admin("config", {"redirect_to": "http://127.0.0.1:9/base/", "redirect_status": 302}).ok
    response = requests.get(client.url + WD, params={"id": 4}, timeout=5, allow_redirects=False,
                            headers=signer.headers("withdrawalQueryAll", {"id": 4}))
    assert response.status_code == 302
    assert response.headers["Location"] == "http://127.0.0.1:9/base" + WD + "?id=4"
    body = {"address": ADDRESS, "blockchain": "Solana", "quantity": "1", "symbol": "USDC"}
    response = requests.post(client.url + WD, json=body, headers=signer.headers("withdraw", body), timeout=5,
                             allow_redirects=False)
    assert response.status_code == 302 and client.ledger()["withdrawals"] == []


@pytest.mark.parametrize("setting", [{"ignore_filters": "yes"}, {"redirect_to": "ftp://x"}, {"redirect_to": 5},
                                     {"redirect_status": 200}, {"redirect_status": True}])
def test_admin_config_refuses_bad_filter_and_redirect_settings(client, setting):
    response = client.admin("config", setting)
    assert response.status_code == 400 and response.json()["code"] == "INVALID_CLIENT_REQUEST"


def test_withdrawal_limit_verifies_the_signature_of_the_query_as_received(client, signer):
    def limit(wire: dict, signed: dict) -> requests.Response:
        headers = signer.headers("maxWithdrawalQuantity", signed)
        return requests.get(client.url + "/api/v1/account/limits/withdrawal", params=wire, headers=headers, timeout=5)

    query = {"symbol": "USDC", "autoBorrow": "true", "autoLendRedeem": "false"}
    response = limit(query, {"symbol": "USDC", "autoBorrow": True, "autoLendRedeem": False})
    assert response.status_code == 200
    assert response.json() == {"symbol": "USDC", "autoBorrow": True, "autoLendRedeem": False,
                               "maxWithdrawalQuantity": "1000"}
    # Signed one way, sent another: refused, like the exchange.
    mismatch = limit({"symbol": "USDC", "autoBorrow": "true"}, {"symbol": "USDC", "autoBorrow": "false"})
    assert mismatch.status_code == 400 and mismatch.json()["message"] == "Invalid signature"
    # A boolean written the Python way is not a boolean on the wire.
    python_bool = limit({"symbol": "USDC", "autoBorrow": "True"}, {"symbol": "USDC", "autoBorrow": "True"})
    assert python_bool.status_code == 400 and "autoBorrow" in python_bool.text
    assert limit({"symbol": "SOL"}, {"symbol": "SOL"}).json() == {"symbol": "SOL", "maxWithdrawalQuantity": "25"}


# --------------------------------------------------------------------------- keep-alive without the Nagle stall


def test_accepted_sockets_have_tcp_nodelay(sandbox, client):
    """Without TCP_NODELAY a small write waits for the client's delayed ACK: ~40 ms per keep-alive request."""
    with requests.Session() as session:
        for _ in range(2):
            assert session.get(client.url + CAPITAL, headers=client.signer.headers("balanceQuery", {}),
                               timeout=5).status_code == 200
        server = sandbox._server
        with server.connections_lock:
            sockets = list(server.open_connections)
        assert len(sockets) == 1  # the kept-alive connection
        assert all(s.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY) for s in sockets)


def test_a_response_leaves_in_one_write(sandbox, client, monkeypatch):
    """Head and body in separate writes is the other half of the stall: the body waits for an ACK."""
    from devtools import sandbox as sandbox_module

    writes: list[bytes] = []
    setup = sandbox_module._Handler.setup

    def counting_setup(handler) -> None:
        setup(handler)
        raw = handler.wfile

        class Counting:
            def write(self, data: bytes) -> int:
                writes.append(bytes(data))
                return raw.write(data)

            def __getattr__(self, name: str):
                return getattr(raw, name)

        handler.wfile = Counting()

    monkeypatch.setattr(sandbox_module._Handler, "setup", counting_setup)
    with requests.Session() as session:
        for _ in range(2):
            response = session.get(client.url + CAPITAL, headers=client.signer.headers("balanceQuery", {}), timeout=5)
            assert response.status_code == 200
    assert len(writes) == 2
    assert all(w.startswith(b"HTTP/1.1 200") and w.endswith(response.content) for w in writes)


# --------------------------------------------------------------------------- persistence and CLI


def test_state_file_survives_stop_and_restart(make_sandbox, signer, tmp_path):
    state = tmp_path / "ledger" / "sandbox.json"
    first = make_sandbox(state_file=state)
    client = Client(first, signer)
    assert client.withdraw(quantity="100", clientId="persist-1").status_code == 200
    first.stop()
    assert json.loads(state.read_text())["next_id"] == 2

    second = make_sandbox(state_file=state, balances={"USDC": Decimal("5")}, history_lag=0)
    client = Client(second, signer)
    assert client.balances().json()["USDC"]["available"] == "900"  # the file wins over the config
    assert [r["clientId"] for r in wait_for(lambda: in_history(client))] == ["persist-1"]
    assert client.withdraw(quantity="1").json()["id"] == 2
    assert client.ledger()["requests"]["POST /wapi/v1/capital/withdrawals"] == 2
    assert [p.name for p in state.parent.iterdir()] == ["sandbox.json"]  # no temp files left


def test_cli_starts_answers_and_exits_on_sigterm(tmp_path, signer):
    ready = tmp_path / "ready.url"
    env = {**os.environ, "SANDBOX_API_KEY": signer.api_key, "SANDBOX_BALANCES": "USDC=10,SOL=2"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "devtools.sandbox", "--port", "0", "--ready-file", str(ready), "--balances", "USDC=11",
         "--ignore-filters", "--redirect-to", "http://127.0.0.1:9"],
        cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        url = wait_for(lambda: ready.exists() and ready.read_text().strip(), timeout=20)
        assert requests.get(url + "/_sandbox/health", timeout=5).json() == {"ok": True}
        response = requests.get(url + CAPITAL, headers=signer.headers("balanceQuery", {}), timeout=5,
                                allow_redirects=False)
        assert response.status_code == 307 and response.headers["Location"] == "http://127.0.0.1:9" + CAPITAL
        config = requests.get(url + "/_sandbox/ledger", timeout=5).json()["config"]
        assert config["ignore_filters"] is True and config["redirect_to"] == "http://127.0.0.1:9"
        requests.post(url + "/_sandbox/config", json={"redirect_to": None}, timeout=5).raise_for_status()
        response = requests.get(url + CAPITAL, headers=signer.headers("balanceQuery", {}), timeout=5)
        assert response.json() == {"USDC": {"available": "11", "locked": "0", "staked": "0"}}  # option wins
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=10)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == 0, err
    assert out.strip() == f"sandbox listening on {url}"


def test_cli_requires_an_api_key(tmp_path):
    env = {k: v for k, v in os.environ.items() if not k.startswith("SANDBOX_")}
    result = subprocess.run([sys.executable, "-m", "devtools.sandbox", "--port", "0"], cwd=ROOT, env=env,
                            capture_output=True, text=True, timeout=30)
    assert result.returncode == 2 and "API key is required" in result.stderr


def test_config_refuses_a_bad_api_key_or_fault_setting(signer):
    from bpx_worker.errors import ConfigurationError

    with pytest.raises(ConfigurationError):
        Sandbox(SandboxConfig(api_key="not-a-key", balances={}))
    with pytest.raises(ValueError):
        Sandbox(SandboxConfig(api_key=signer.api_key, balances={}, faults=Faults(p_drop=2)))
