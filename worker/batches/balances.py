"""Read the account's available balances, as the workflow's balance step does. Runs only in a worker.

The request is the document's own balance step (operationId `get_balances`), built
from the compiled workflow and sent through the worker's client (signed, rate
limited). The submitting machine holds no API secret: it asks a worker
(`batch.readBalances`) and gets the answer back through Redis.
"""

from __future__ import annotations

from collections.abc import Iterable
from decimal import Decimal

from bpx_worker.arazzo import Context, Workflow, build_request
from bpx_worker.engine.engine import Exchange
from bpx_worker.errors import DocumentError
from bpx_worker.withdrawal.rules import BALANCES_OPERATION, available


def read_available(client: Exchange, workflow: Workflow, symbols: Iterable[str]) -> dict[str, Decimal]:
    """Available balance per symbol (a symbol the account does not hold counts as zero)."""
    step = next((s for s in workflow.steps if s.operation.operation_id == BALANCES_OPERATION), None)
    if step is None:
        raise DocumentError(f"workflow {workflow.workflow_id!r} has no {BALANCES_OPERATION} step")
    response = client.send(build_request(step, Context(inputs={})))
    return {symbol: available(response.body, symbol) for symbol in sorted(set(symbols))}
