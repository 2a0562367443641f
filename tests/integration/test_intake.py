"""The HTTP intake over real HTTP (`bpx-worker serve`), with a real worker, Redis and the sandbox: status codes,
paging, callbacks, Flower's view of failed jobs, metrics and logs."""

import hashlib
import hmac
import json
import subprocess
import sys
import time
import uuid
from decimal import Decimal

import pytest
import requests
from prometheus_client.parser import text_string_to_metric_families

from bpx_worker.interfaces.api import wait_for
from bpx_worker.jobs.schedule import POLLS_KEY
from bpx_worker.jobs.store import PAUSED, idem_key
from devtools.local import free_port, wait_until
from tests.addresses import solana_address
from tests.integration.intake_stack import (
    CALLBACK_SECRET,
    OTHER_TOKEN,
    auth,
    flower,
    intake,
    intake_worker,
    receiver,
)

ALL_STEPS = ("getBalances", "requestWithdrawal", "reconcileWithdrawal")


@pytest.fixture(scope="module")
def metrics_port(stack):
    port = free_port()
    with intake_worker(stack, port):
        yield port


@pytest.fixture(scope="module")
def api(stack, metrics_port):
    with intake(stack) as url:
        yield url


def _key() -> str:
    return f"http-{uuid.uuid4().hex}"


def _body(quantity="1", symbol="USDC", **extra):
    return {"symbol": symbol, "blockchain": "Solana", "address": solana_address(), "quantity": quantity, **extra}


def _post(api, body, key=None, token=None, **kwargs):
    headers = {**auth(*(token,) if token else ()), **({"Idempotency-Key": key} if key else {})}
    return requests.post(api + "/v1/withdrawals", json=body, headers=headers, timeout=10, **kwargs)


def _metrics(url: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    text = requests.get(url, timeout=10).text
    return {(sample.name, tuple(sorted(sample.labels.items()))): sample.value
            for family in text_string_to_metric_families(text) for sample in family.samples}


def _value(samples, name: str, **labels: str) -> float:
    """The sum of `name` over the samples whose labels include `labels`."""
    return sum(value for (n, got), value in samples.items()
               if n == name and all((k, v) in got for k, v in labels.items()))


# --- submit -------------------------------------------------------------------------------------------


def test_first_submit_answers_201_a_replay_200_with_the_same_job_and_another_body_409(api, sandbox, store):
    key, body = _key(), _body("2.5")
    first = _post(api, body, key)
    assert first.status_code == 201, first.text
    job = first.json()
    assert first.headers["Location"] == f"/v1/withdrawals/{job['job_id']}"
    assert (job["state"], job["inputs"]["quantity"], job["submitted_by"]) == ("queued", "2.5", "payments")

    replay = _post(api, body, key)
    assert replay.status_code == 200, replay.text
    assert replay.json()["job_id"] == job["job_id"]
    # The same amount written differently is the same request.
    assert _post(api, {**body, "quantity": "2.50"}, key).json()["job_id"] == job["job_id"]

    conflict = _post(api, {**body, "quantity": "3"}, key)
    assert conflict.status_code == 409, conflict.text
    assert conflict.json()["error"] == "idempotency_conflict"
    assert conflict.json()["job_id"] == job["job_id"]
    assert set(conflict.json()["fields"]) == {"quantity"}
    other_caller = _post(api, body, key, token=OTHER_TOKEN)
    assert other_caller.status_code == 409
    assert set(other_caller.json()["fields"]) == {"submitted_by"}

    record = wait_for(job["job_id"], timeout=60)
    assert record.state == "succeeded", record.error
    assert [Decimal(w["quantity"]) for w in sandbox.withdrawals(record.client_id)] == [Decimal("2.5")]
    again = _post(api, body, key)
    assert (again.status_code, again.json()["state"]) == (200, "succeeded")


def test_requests_without_a_valid_token_get_401_and_the_probes_need_none(api):
    key, body = _key(), _body()
    for headers in ({}, {"Authorization": "Bearer not-a-token-of-this-service"},
                    {"Authorization": f"Basic {OTHER_TOKEN}"}, {"Authorization": "Bearer"}):
        answer = requests.post(api + "/v1/withdrawals", json=body, headers={**headers, "Idempotency-Key": key},
                               timeout=10)
        assert answer.status_code == 401, (headers, answer.text)
        assert answer.headers["WWW-Authenticate"] == "Bearer"
        assert answer.json()["error"] == "unauthorized"
    assert requests.get(api + "/v1/withdrawals", timeout=10).status_code == 401
    assert requests.get(api + "/v1/withdrawals/abc", timeout=10).status_code == 401
    assert requests.get(api + "/healthz", timeout=10).json() == {"status": "ok"}
    assert requests.get(api + "/readyz", timeout=10).json() == {"status": "ready"}
    assert requests.get(api + "/openapi.json", timeout=10).json()["paths"]["/v1/withdrawals"]
    assert requests.get(api + "/docs", timeout=10).status_code == 200


def test_bad_fields_get_422_naming_each_and_nothing_is_written(api, store):
    key = _key()
    bad = {"symbol": "usdc", "blockchain": "Solana", "quantity": 1.5, "colour": "red",
           "callback_url": "http://hooks.elsewhere.example/cb", "idempotency_key": "in-the-body"}
    answer = _post(api, bad, key)
    assert answer.status_code == 422, answer.text
    fields = answer.json()["fields"]
    assert fields["symbol"] == "unknown asset 'usdc' (did you mean 'USDC'?)"
    assert fields["address"] == "required"
    assert fields["quantity"] == 'must be a decimal string such as "12.5", not a JSON number'
    assert fields["colour"] == "unknown field"
    assert "CALLBACK_ALLOWED_HOSTS" in fields["callback_url"]
    assert "Idempotency-Key header" in fields["idempotency_key"]
    assert not store.redis.exists(idem_key(key))

    missing_key = _post(api, _body())
    assert missing_key.status_code == 422
    assert missing_key.json()["fields"] == {"Idempotency-Key": "required"}
    bad_key = _post(api, _body(), key="not a key!")
    assert "Idempotency-Key" in bad_key.json()["fields"]
    not_json = requests.post(api + "/v1/withdrawals", data=b"{nope", timeout=10,
                             headers={**auth(), "Idempotency-Key": key, "Content-Type": "application/json"})
    assert (not_json.status_code, not_json.json()["fields"]) == (422, {"request": "must be a JSON object"})
    # A token without a callback secret cannot ask for callbacks.
    no_secret = _post(api, _body(callback_url="http://127.0.0.1:1/cb"), key, token=OTHER_TOKEN)
    assert "CALLBACK_SECRETS" in no_secret.json()["fields"]["callback_url"]
    huge = _post(api, _body(address="A" * 20_000), key)
    assert huge.status_code == 413
    assert not store.redis.exists(idem_key(key))


def test_get_returns_the_job_record_and_404_for_an_unknown_job(api, sandbox):
    created = _post(api, _body(), _key()).json()
    record = wait_for(created["job_id"], timeout=60)
    answer = requests.get(f"{api}/v1/withdrawals/{created['job_id']}", headers=auth(), timeout=10)
    assert answer.status_code == 200
    assert answer.json() == json.loads(json.dumps(record.model_dump(mode="json")))
    assert set(answer.json()["steps"]) == set(ALL_STEPS)
    missing = requests.get(f"{api}/v1/withdrawals/{uuid.uuid4().hex}", headers=auth(), timeout=10)
    assert (missing.status_code, missing.json()["error"]) == (404, "not_found")


def test_list_pages_newest_first_without_repeats_and_filters_by_state(api, sandbox):
    batch = [_post(api, _body("1"), _key()).json()["job_id"] for _ in range(3)]
    failing = [_post(api, _body("50.0001", symbol="SOL"), _key()).json()["job_id"] for _ in range(2)]
    for job_id in batch + failing:
        wait_for(job_id, timeout=60)

    seen, cursor, pages = [], None, 0
    while True:
        params = {"limit": 2, **({"cursor": cursor} if cursor else {})}
        page = requests.get(api + "/v1/withdrawals", params=params, headers=auth(), timeout=10).json()
        assert len(page["items"]) <= 2
        seen += page["items"]
        pages += 1
        cursor = page["next_cursor"]
        if cursor is None:
            break
    ids = [item["job_id"] for item in seen]
    assert len(ids) == len(set(ids)), "a job appeared on two pages"
    assert set(batch + failing) <= set(ids)
    created = [item["created_at"] for item in seen]
    assert created == sorted(created, reverse=True)
    assert pages >= 3

    failed = requests.get(api + "/v1/withdrawals", params={"state": "failed", "limit": 200}, headers=auth(),
                          timeout=10).json()
    assert {item["state"] for item in failed["items"]} == {"failed"}
    assert set(failing) <= {item["job_id"] for item in failed["items"]}

    for params, field in (({"cursor": "bm90IGEgY3Vyc29y"}, "cursor"), ({"state": "lost"}, "state"),
                          ({"limit": 0}, "limit")):
        refused = requests.get(api + "/v1/withdrawals", params=params, headers=auth(), timeout=10)
        assert refused.status_code == 422, params
        assert field in refused.json()["fields"]


# --- callbacks ----------------------------------------------------------------------------------------


def _verify(call, now: float) -> dict:
    timestamp = call.headers["X-Timestamp"]
    expected = hmac.new(CALLBACK_SECRET.encode(), timestamp.encode() + b"." + call.body, hashlib.sha256).hexdigest()
    assert hmac.compare_digest(call.headers["X-Signature"], f"sha256={expected}")
    assert abs(now - int(timestamp)) < 120
    return json.loads(call.body)


def test_callback_is_signed_with_the_tokens_secret_and_sent_when_the_job_ends(api, sandbox, store):
    with receiver() as hooks:
        job = _post(api, _body(callback_url=hooks.url("/ok?ref=42")), _key()).json()
        [call] = hooks.wait_for("/ok")
        payload = _verify(call, time.time())
    assert payload["type"] == "withdrawal.ended"
    assert payload["job"]["job_id"] == job["job_id"] == call.headers["X-Job-Id"]
    assert payload["job"]["state"] == "succeeded"
    assert payload["job"]["outputs"]["status"] == "confirmed"
    # The receiver has the call before the delivery task has its answer and records it.
    wait_until(lambda: store.callback_delivery(job["job_id"]).get("state") == "delivered", 30, "the delivery record")


def test_callback_of_a_failed_job_carries_its_error_code(api, sandbox):
    with receiver() as hooks:
        _post(api, _body("50.0001", symbol="SOL", callback_url=hooks.url("/ok")), _key())
        [call] = hooks.wait_for("/ok")
        payload = _verify(call, time.time())
    assert payload["job"]["state"] == "failed"
    assert payload["job"]["error"]["code"] == "INSUFFICIENT_FUNDS"


def test_callback_is_retried_with_backoff_until_the_receiver_accepts_it(api, sandbox, store):
    with receiver() as hooks:
        job = _post(api, _body(callback_url=hooks.url("/flaky")), _key()).json()
        calls = hooks.wait_for("/flaky", count=3)
        wait_until(lambda: store.callback_delivery(job["job_id"]).get("state") == "delivered", 30, "delivery")
    assert len(calls) == 3
    assert store.callback_delivery(job["job_id"])["attempts"] == "3"
    # Each try is signed afresh, and each body is the same record.
    assert len({c.body for c in calls}) == 1


def test_a_redirect_from_the_receiver_is_never_followed(api, sandbox, store):
    with receiver() as hooks:
        job = _post(api, _body(callback_url=hooks.url("/redirect")), _key()).json()
        wait_until(lambda: store.callback_delivery(job["job_id"]).get("state") == "refused", 60, "the refusal")
        assert len(hooks.on("/redirect")) == 1
        assert hooks.on("/redirected") == []


def test_a_host_off_the_workers_allow_list_is_never_called(api, sandbox, store):
    # 127.0.0.2 passes the intake's list but not the worker's: the worker checks again before calling.
    with receiver("127.0.0.2") as elsewhere:
        job = _post(api, _body(callback_url=elsewhere.url("/ok")), _key())
        assert job.status_code == 201, job.text
        job_id = job.json()["job_id"]
        assert wait_for(job_id, timeout=60).state == "succeeded"
        wait_until(lambda: store.callback_delivery(job_id).get("state") == "refused", 60, "the refusal")
        assert "CALLBACK_ALLOWED_HOSTS" in store.callback_delivery(job_id)["error"]
        assert elsewhere.calls == []


# --- Flower, metrics, logs ----------------------------------------------------------------------------


def _flower_tasks(url: str, job_id: str) -> dict[str, dict]:
    """The job's latest task of each name: a woken poll is a task of its own, after the one that said "not yet"."""
    tasks = requests.get(url + "/api/tasks", timeout=10).json()
    mine = sorted((info for info in tasks.values() if job_id in str(info.get("args"))),
                  key=lambda info: info.get("timestamp") or 0)
    return {info["name"]: info for info in mine}


def test_flower_shows_a_job_that_failed_or_needs_review_as_a_failed_task_with_its_code(stack, api, sandbox, store):
    with flower(stack) as url:
        # Flower records what happens after it connects: wait until it sees a job of ours go through.
        warm = _post(api, _body(), _key()).json()["job_id"]
        wait_until(lambda: _flower_tasks(url, warm).get("withdrawal.reconcileWithdrawal", {}).get("state")
                   == "SUCCESS", 60, "Flower to see a job succeed")
        failed = _post(api, _body("50.0001", symbol="SOL"), _key()).json()["job_id"]
        sandbox.configure(hold_status="ownershipVerificationRequired")
        review = _post(api, _body(), _key()).json()["job_id"]
        assert wait_for(review, timeout=60).state == "needs_review"
        sandbox.configure(hold_status=None)
        assert wait_for(failed, timeout=60).state == "failed"

        seen = wait_until(lambda: (lambda t: t if t.get("withdrawal.getBalances", {}).get("state") == "FAILURE"
                                   else None)(_flower_tasks(url, failed)), 60, "Flower to see the failure")
        assert "INSUFFICIENT_FUNDS" in seen["withdrawal.getBalances"]["exception"]
        assert set(seen) == {"withdrawal.getBalances"}  # the chain stopped there
        reviewed = wait_until(lambda: (lambda t: t if t.get("withdrawal.reconcileWithdrawal", {}).get("state")
                                       == "FAILURE" else None)(_flower_tasks(url, review)), 60, "the review")
        assert "STATUS_NEEDS_REVIEW" in reviewed["withdrawal.reconcileWithdrawal"]["exception"]
        assert reviewed["withdrawal.getBalances"]["state"] == "SUCCESS"
        assert failed in seen["withdrawal.getBalances"]["args"]  # the job id, in Flower's task list
        # Acknowledged, not requeued: the failed step ran once, and no message of it is left unacked.
        assert store.require(failed).steps["getBalances"].runs == 1
        task_id = seen["withdrawal.getBalances"]["uuid"]
        wait_until(lambda: not any(task_id in str(v) for v in store.redis.hvals("unacked")), 30, "the ack")
        assert store.require(failed).steps["getBalances"].runs == 1


def test_worker_metrics_count_jobs_calls_and_polls_across_its_pool_processes(stack, api, metrics_port, sandbox,
                                                                             store):
    url = f"http://127.0.0.1:{metrics_port}/metrics"
    wait_until(lambda: requests.get(url, timeout=2).ok, 30, "the worker's metrics")
    # Counted from an idle worker: a re-queued run of an earlier test's job (a countdown message the worker
    # holds unacked until due) would otherwise be counted here.
    wait_until(lambda: store.redis.hlen("unacked") == 0 and store.redis.zcard(POLLS_KEY) == 0, 60,
               "the worker to be idle")
    before = _metrics(url)
    balance_reads_before = sandbox.ledger()["requests"].get("GET /api/v1/capital", 0)
    good = [_post(api, _body(), _key()).json()["job_id"] for _ in range(4)]
    bad = _post(api, _body("50.0001", symbol="SOL"), _key()).json()["job_id"]
    records = [wait_for(job_id, timeout=60) for job_id in [*good, bad]]
    after = _metrics(url)

    def grew(name: str, **labels: str) -> float:
        return _value(after, name, **labels) - _value(before, name, **labels)

    assert grew("bpxw_jobs_ended_total", state="succeeded", code="") == 4
    assert grew("bpxw_jobs_ended_total", state="failed", code="INSUFFICIENT_FUNDS") == 1
    # Five balance checks; the jobs share reads made within SHARED_READ_SECONDS: counted as the exchange saw them.
    balance_reads = sandbox.ledger()["requests"].get("GET /api/v1/capital", 0) - balance_reads_before
    assert 1 <= balance_reads <= 5
    assert grew("bpxw_exchange_calls_total", operation="get_balances", status="200") == balance_reads
    assert grew("bpxw_exchange_calls_total", operation="request_withdrawal", status="200") == 4
    assert grew("bpxw_reconcile_polls_total", step="reconcileWithdrawal", status="confirmed") == 4
    assert grew("bpxw_step_seconds_count", step="requestWithdrawal", state="done") == 4
    assert grew("bpxw_step_runs_total", step="getBalances", next="stop") == 1
    # Every run of a step after its first was re-queued with a due time, and is measured against it (a run
    # re-queued before it started, by a held lease or the rate limit, is measured too but not in `runs`).
    # (A poll round observes its runs once every job in it is done: after the records, so await it.)
    requeued = sum(r.steps["reconcileWithdrawal"].runs - 1 for r in records[:4])
    wait_until(lambda: _value(_metrics(url), "bpxw_task_start_delay_seconds_count", step="reconcileWithdrawal")
               - _value(before, "bpxw_task_start_delay_seconds_count", step="reconcileWithdrawal") >= requeued,
               30, "every re-queued run measured")
    assert _value(after, "bpxw_redis_up") == 1
    assert ("bpxw_queue_messages", (("queue", "withdrawals"),)) in after
    assert _value(after, "bpxw_paused") == 0


def test_intake_metrics_show_submissions_and_the_kill_switch(api, store):
    url = api + "/metrics"
    before = _metrics(url)
    _post(api, _body(), key=None)  # 422: no Idempotency-Key
    _post(api, _body(), _key())
    store.redis.set(PAUSED, "test")
    try:
        after = _metrics(url)
    finally:
        store.redis.delete(PAUSED)
    assert _value(after, "bpxw_intake_submissions_total", outcome="created") - \
        _value(before, "bpxw_intake_submissions_total", outcome="created") == 1
    assert _value(after, "bpxw_intake_requests_total", route="/v1/withdrawals", method="POST", status="422") >= 1
    assert _value(after, "bpxw_paused") == 1
    assert _value(_metrics(url), "bpxw_paused") == 0


def test_worker_logs_are_json_and_carry_the_withdrawal_id(stack, api, sandbox):
    job_id = _post(api, _body(), _key()).json()["job_id"]
    record = wait_for(job_id, timeout=60)
    withdrawal_id = record.outputs["withdrawalId"]

    def lines() -> list[dict]:
        text = (stack.directory / "intake-worker.log").read_text()
        return [json.loads(line) for line in text.splitlines() if line.startswith("{")]

    done = wait_until(lambda: [e for e in lines() if e.get("event") == "job_succeeded" and e.get("job_id") == job_id],
                      30, "the job's log line")
    assert done[0]["withdrawal_id"] == withdrawal_id
    # Celery's own records pass through the same pipeline: JSON, with the job bound.
    celery = [e for e in lines() if str(e.get("logger", "")).startswith("celery") and e.get("job_id") == job_id]
    assert celery, "no Celery record of the job in JSON"


# --- serve --------------------------------------------------------------------------------------------


def test_serve_refuses_to_start_without_tokens_naming_the_variable(stack):
    env = stack.env()
    env.pop("INTAKE_TOKENS", None)
    env.pop("INTAKE_TOKENS_FILE", None)
    ran = subprocess.run([sys.executable, "-m", "bpx_worker.interfaces.cli", "serve", "--port", str(free_port())],
                         env=env, capture_output=True, text=True, timeout=60)
    assert ran.returncode == 78
    assert "INTAKE_TOKENS" in ran.stderr


def test_serve_listens_on_loopback_only_by_default(api):
    port = int(api.rsplit(":", 1)[1])
    listening = []
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with open(table) as rows:
            for row in list(rows)[1:]:
                local, state = row.split()[1], row.split()[3]
                if state == "0A" and int(local.rsplit(":", 1)[1], 16) == port:
                    listening.append(local.rsplit(":", 1)[0])
    assert listening == ["0100007F"]  # 127.0.0.1, and nothing else
