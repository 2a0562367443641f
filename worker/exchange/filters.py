"""Filtered reads that the client checks instead of trusting.

`get_withdrawals` takes `id` and `clientId` filters, but only the newest API
description has them (notes/backpack-api.md section 2.3). An exchange that
ignores them answers with other withdrawals: the reconcile step would read
someone else's withdrawal as its own, and a lookup after an ambiguous POST
would miss the one it looks for. So after a filtered read every item is checked
against the filters; when one does not match, the history is paged
(limit/offset, keeping the request's own `from`/`to`) and matched here, and only
the matching items are returned: the shape a filtered answer has.

Many filtered reads of one list can also be answered by one read of the list
(`read_shared`): the reconciliation of many pending withdrawals reads the
history once, from the oldest of them on, instead of once per withdrawal.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any, Generic, Protocol, TypeVar

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
    since: str = "from"  # lists only the items created at or after this time (ms since the epoch)


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


Answer = TypeVar("Answer", bound=_HasBody)


@dataclass(frozen=True)
class SharedRead(Generic[Answer]):
    """The answers `read_shared` found, one per request, and the last page of the list it read."""

    answers: list[list[Any] | None]  # the items each request's own filters match; None: not answered
    page: Answer | None  # the exchange's last answer (status, headers); None when nothing was read


def read_shared(
    send: Callable[[HttpRequest], Answer],
    requests: Sequence[HttpRequest],
    since_ms: int,
    *,
    page_size: int,
    max_pages: int,
) -> SharedRead[Answer]:
    """Answer filtered reads of one list (`GET` withdrawals by `id`) with one read of the list.

    The list is read from `since_ms` on (its `from` filter, limit/offset pages) until a
    short page, and each request gets the items its own filters match: the answer the
    exchange gives that read alone, provided whatever it looks for was created at or
    after `since_ms` (the caller's promise). A request whose item is absent from a
    complete read gets `[]`: not listed (yet). When `max_pages` end first, a request
    whose unique filter (`id`) matched keeps its item and the others get None, as do
    requests that are not a plain filtered read of a known list: send those alone.
    Raises what `send` raises (RateLimited, TransientError): then nothing was answered.
    """
    shared = [_shareable(request) for request in requests]
    template = next((r for r, spec in zip(requests, shared, strict=True) if spec is not None), None)
    if template is None:
        return SharedRead([None] * len(requests), None)
    spec = FILTERED_LISTS[(template.method.upper(), template.path)]
    size = max(1, min(page_size, spec.max_limit))
    # Each request looks its items up by its first filter's value (as rendered); only items some request
    # looks for are kept. A round of hundreds of jobs against thousands of items stays linear, and small.
    wanted = [rendered(r.query) if s is not None and r.path == template.path else None
              for r, s in zip(requests, shared, strict=True)]
    keys = {next(iter(w.items())) for w in wanted if w}
    index: dict[tuple[str, str], dict[str, Any]] = {key: {} for key in keys}
    page: Answer | None = None
    complete = False
    for number in range(max_pages):
        paged = page_request(template, spec, number * size, size)
        page = send(replace(paged, query={**paged.query, spec.since: since_ms}))
        body = page.body
        if not isinstance(body, list):
            raise TransientError(f"unexpected answer paging {template.path}: not a list")
        for item in body:
            if not isinstance(item, Mapping):
                continue
            for name in spec.filters:
                found = index.get((name, render(item[name]))) if item.get(name) is not None else None
                if found is not None:
                    # New items shift an offset-paged list: one may show up on two pages.
                    found.setdefault(repr(item.get("id")) if item.get("id") is not None else repr(item), item)
        if len(body) < size:
            complete = True
            break
    if not complete:
        log.warning("shared_read_incomplete", path=template.path, pages=max_pages, since_ms=since_ms)
    answers: list[list[Any] | None] = []
    for filters_of_request in wanted:
        if not filters_of_request:
            answers.append(None)
            continue
        candidates = index[next(iter(filters_of_request.items()))].values()
        matched = [item for item in candidates if matches(item, filters_of_request)]
        answers.append(matched if complete or (matched and spec.unique & filters_of_request.keys()) else None)
    return SharedRead(answers, page)


def _shareable(request: HttpRequest) -> FilteredList | None:
    """The list spec when `request` is a read of a known list with filters and no other parameter."""
    spec = FILTERED_LISTS.get((request.method.upper(), request.path))
    if spec is None or request.body is not None:
        return None
    query = {name: value for name, value in request.query.items() if value is not None}
    if not query or not set(query) <= set(spec.filters):
        return None
    return spec
