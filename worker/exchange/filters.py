"""Filtered reads that the client checks instead of trusting.

`get_withdrawals` takes `id` and `clientId` filters, but only the newest API
description has them (notes/backpack-api.md section 2.3). An exchange that
ignores them answers with other withdrawals: the reconcile step would read
someone else's withdrawal as its own, and a lookup after an ambiguous POST
would miss the one it looks for. So after a filtered read every item is checked
against the filters; when one does not match, the history is paged
(limit/offset, keeping the request's own `from`/`to`) and matched here, and only
the matching items are returned: the shape a filtered answer has.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from typing import Any, Protocol

import structlog

from bpx_worker.arazzo import HttpRequest
from bpx_worker.errors import TransientError
from bpx_worker.exchange.signer import render, rendered

log = structlog.get_logger(__name__)


class _HasBody(Protocol):
    @property
    def body(self) -> Any: ...


@dataclass(frozen=True)
class FilteredList:
    """A list operation whose query filters must hold for every item it returns."""

    filters: tuple[str, ...]  # query parameters matched against the item field of the same name
    unique: frozenset[str] = frozenset()  # filters that match at most one item (stop at the first)
    limit: str = "limit"
    offset: str = "offset"
    max_limit: int = 1000  # the operation's maximum page size


WITHDRAWALS_PATH = "/wapi/v1/capital/withdrawals"

# (method, path) -> what its filters mean. From the OpenAPI's get_withdrawals:
# `id` (int32, unique), `clientId` (string, not unique: the exchange does not enforce it).
FILTERED_LISTS: Mapping[tuple[str, str], FilteredList] = {
    ("GET", WITHDRAWALS_PATH): FilteredList(("id", "clientId"), unique=frozenset({"id"})),
}


def filtered_list(request: HttpRequest) -> tuple[FilteredList, dict[str, str]] | None:
    """The list spec and the filters (as sent) of a filtered read, or None for any other request."""
    spec = FILTERED_LISTS.get((request.method.upper(), request.path))
    if spec is None:
        return None
    query = rendered(request.query)
    active = {name: query[name] for name in spec.filters if name in query}
    return (spec, active) if active else None


def matches(item: Any, filters: Mapping[str, str]) -> bool:
    """True when the item carries every filtered field with the filtered value (compared as rendered)."""
    if not isinstance(item, Mapping):
        return False
    return all(item.get(name) is not None and render(item[name]) == value for name, value in filters.items())


def honoured(body: Any, filters: Mapping[str, str]) -> bool:
    """True when a list answer holds only items that match the filters (an empty list does)."""
    return isinstance(body, list) and all(matches(item, filters) for item in body)


def page_request(request: HttpRequest, spec: FilteredList, offset: int, limit: int) -> HttpRequest:
    """The request without its filters (the exchange ignored them), for one page of the history."""
    query = {k: v for k, v in request.query.items()
             if k not in spec.filters and k not in (spec.limit, spec.offset)}
    query[spec.limit] = limit
    query[spec.offset] = offset
    return replace(request, query=query)


def search_history(
    send: Callable[[HttpRequest], _HasBody],
    request: HttpRequest,
    spec: FilteredList,
    filters: Mapping[str, str],
    *,
    page_size: int,
    max_pages: int,
) -> list[Any]:
    """Page the history and return the items matching `filters`, in the order the exchange gave them.

    Stops at a short page (the end), or at the first match when a unique filter
    (`id`) is set. Raises TransientError when nothing matched and the end was not
    reached within `max_pages`: absence is then not proven.
    """
    size = max(1, min(page_size, spec.max_limit))
    found: list[Any] = []
    seen: set[str] = set()
    for page in range(max_pages):
        body = send(page_request(request, spec, page * size, size)).body
        if not isinstance(body, list):
            raise TransientError(f"unexpected answer paging {request.path}: not a list")
        for item in body:
            if not matches(item, filters):
                continue
            # New items shift an offset-paged history: one may show up on two pages.
            key = repr(item.get("id")) if item.get("id") is not None else repr(sorted(item.items()))
            if key not in seen:
                seen.add(key)
                found.append(item)
        if len(body) < size or (found and spec.unique & filters.keys()):
            return found
    if found:
        log.warning("history_search_incomplete", path=request.path, filters=sorted(filters), pages=max_pages)
        return found
    raise TransientError(
        f"the exchange ignored the {'/'.join(sorted(filters))} filter of {request.path} and "
        f"{max_pages} pages of {size} did not reach the end of the history: not found, absence not proven"
    )
