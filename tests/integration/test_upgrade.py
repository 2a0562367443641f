"""A job started by the first version (format-0 record, messages already queued) finishes under this one."""

from __future__ import annotations

import json
import time
import uuid

from bpx_worker.arazzo import HttpRequest
from bpx_worker.exchange.client import BackpackClient
from bpx_worker.exchange.signer import Signer
from bpx_worker.interfaces.api import wait_for
from bpx_worker.jobs.store import ACTIVE_INDEX, JOBS_INDEX, idem_key, job_key
from bpx_worker.tasks.app import app


def test_a_format_0_job_mid_withdrawal_finishes_without_a_second_send(stack, sandbox, store):
    key = f"old-{uuid.uuid4().hex}"
    client_id = f"wd-{key}"
    address = f"Old{uuid.uuid4().hex[:10]}"
    inputs = {"symbol": "USDC", "blockchain": "Solana", "address": address, "quantity": "3", "clientId": client_id}
    # The first version sent the withdrawal and died before recording the answer.
    signer = Signer.from_secret(stack.api_key, stack.secret_file.read_text())
    body = {k: inputs[k] for k in ("symbol", "blockchain", "address", "quantity", "clientId")}
    BackpackClient(stack.sandbox_url, signer).send(
        HttpRequest("POST", "/wapi/v1/capital/withdrawals", "withdraw", body=body))
    now = time.time()
    job_id = uuid.uuid4().hex
    old_record = {
        "client_id": client_id, "inputs": inputs, "current_step": "requestWithdrawal",
        "steps": {
            "getBalances": {"state": "done", "runs": 1, "started_at": now - 2, "outputs": {"balances": {}},
                            "status_code": 200, "ended_at": now - 1.5, "seconds": 0.5},
            "requestWithdrawal": {"state": "running", "runs": 1, "started_at": now - 1},
        },
        "submission": {"attempts": [{"n": 1, "state": "sending", "at": now - 1}]},
        "outputs": {}, "error": None, "job_id": job_id, "idempotency_key": key, "state": "running",
        "created_at": now - 2, "updated_at": now - 1,
    }
    store.redis.set(job_key(job_id), json.dumps(old_record))
    store.redis.set(idem_key(key), job_id)
    store.redis.zadd(JOBS_INDEX, {job_id: now - 2})
    store.redis.zadd(ACTIVE_INDEX, {job_id: now - 1})
    posts_before = sandbox.ledger()["requests"]["POST /wapi/v1/capital/withdrawals"]

    # The rest of the first version's chain, as it sat in the queue: task names and arguments unchanged.
    app.send_task("withdrawal.requestWithdrawal", args=[job_id],
                  chain=[app.signature("withdrawal.reconcileWithdrawal", args=[job_id], immutable=True)])

    record = wait_for(job_id, timeout=60)
    assert record.state == "succeeded", record.error
    assert record.steps["requestWithdrawal"].found_by_lookup
    mine = sandbox.withdrawals(client_id)
    assert len(mine) == 1 and record.outputs["withdrawalId"] == mine[0]["id"]
    assert sandbox.ledger()["requests"]["POST /wapi/v1/capital/withdrawals"] == posts_before  # never re-sent
