"""Reading the exchange's withdrawal history, for operators (`resolve`, `audit`): reads only, never a send.

The operation (path, method, signing instruction) is the document's
`get_withdrawals`, the one the workflow polls with; requests go through the one
exchange client, which checks the `clientId` filter instead of trusting it.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

from bpx_worker.arazzo import HttpRequest, Operation, Workflow
from bpx_worker.engine.engine import Exchange
from bpx_worker.engine.rules import same_value
from bpx_worker.errors import DocumentError, ExchangeError
from bpx_worker.withdrawal.rules import HISTORY_OPERATION

PAGE_SIZE = 1000  # the exchange's maximum `limit`
MAX_PAGES = 200  # 200 000 withdrawals in one window: beyond that, ask for a shorter one

# The job's request field -> the Withdrawal's field (the same pairs the engine's lookup compares).
COMPARED = {"symbol": "symbol", "blockchain": "blockchain", "quantity": "quantity", "address": "toAddress"}


def history_operation(workflow: Workflow) -> Operation:
    """The document's withdrawal-history operation."""
    for step in workflow.steps:
        if step.operation.operation_id == HISTORY_OPERATION:
            return step.operation
    raise DocumentError(f"workflow {workflow.workflow_id!r} has no step using {HISTORY_OPERATION!r}")


def by_client_id(client: Exchange, workflow: Workflow, client_id: str) -> list[Mapping[str, Any]]:
    """Every withdrawal the exchange shows with this clientId (the client pages the history when the
    exchange ignores the filter)."""
    operation = history_operation(workflow)
    response = client.send(HttpRequest(operation.method, operation.path, operation.instruction,
                                       {"clientId": client_id}))
    items = response.body if isinstance(response.body, list) else []
    return [w for w in items if isinstance(w, Mapping) and w.get("clientId") == client_id]


def between(client: Exchange, workflow: Workflow, start: float, end: float, *, page_size: int = PAGE_SIZE,
            max_pages: int = MAX_PAGES) -> list[Mapping[str, Any]]:
    """Every withdrawal created from `start` to `end` (Unix seconds), paged with from/to and limit/offset.

    Items outside the window are dropped (an exchange that ignored from/to); an item seen on two pages
    (the history grew while it was paged) is kept once. Raises ExchangeError when the window holds more
    than `max_pages` pages.
    """
    operation = history_operation(workflow)
    window = {"from": int(start * 1000), "to": int(end * 1000)}
    found: dict[str, Mapping[str, Any]] = {}
    for page in range(max_pages):
        query = {**window, "limit": page_size, "offset": page * page_size}
        body = client.send(HttpRequest(operation.method, operation.path, operation.instruction, query)).body
        if not isinstance(body, list):
            raise ExchangeError(f"unexpected answer paging {operation.path}: not a list")
        for item in body:
            if isinstance(item, Mapping):
                created = created_at(item)
                if created is None or start <= created <= end:
                    found.setdefault(repr(item.get("id")), item)
        if len(body) < page_size:
            return list(found.values())
    raise ExchangeError(f"more than {max_pages * page_size} withdrawals between the two dates: "
                        "audit a shorter window (--since/--until)")


def created_at(withdrawal: Mapping[str, Any]) -> float | None:
    """The withdrawal's `createdAt` as Unix seconds. The exchange writes it without a zone: UTC."""
    text = withdrawal.get("createdAt")
    if not isinstance(text, str):
        return None
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        return None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return moment.timestamp()


def differences(inputs: Mapping[str, Any], withdrawal: Mapping[str, Any]) -> dict[str, tuple[Any, Any]]:
    """The request fields on which the withdrawal differs from the job's inputs: name -> (job's, exchange's).

    Quantities are compared as decimals."""
    return {name: (inputs.get(name), withdrawal.get(theirs)) for name, theirs in COMPARED.items()
            if not same_value(inputs.get(name), withdrawal.get(theirs))}
