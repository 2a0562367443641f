"""Filtered history reads: what counts as honoured, and the bounded search when a filter was ignored."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import pytest

from bpx_worker.arazzo import HttpRequest
from bpx_worker.errors import TransientError
from bpx_worker.exchange.filters import (
    FILTERED_LISTS,
    WITHDRAWALS_PATH,
    filtered_list,
    honoured,
    matches,
    page_request,
    search_history,
)

SPEC = FILTERED_LISTS[("GET", WITHDRAWALS_PATH)]


def lookup(**query: Any) -> HttpRequest:
    return HttpRequest("GET", WITHDRAWALS_PATH, "withdrawalQueryAll", query)


@dataclass
class Page:
    body: Any


class History:
    """An exchange history that ignores id/clientId and pages newest first; records every query."""

    def __init__(self, count: int):
        self.items = [{"id": n, "clientId": f"wd-{n}", "status": "pending"} for n in range(count, 0, -1)]
        self.queries: list[dict[str, Any]] = []

    def __call__(self, request: HttpRequest) -> Page:
        self.queries.append(dict(request.query))
        offset, limit = request.query["offset"], request.query["limit"]
        return Page(self.items[offset:offset + limit])


def test_only_withdrawal_reads_with_a_filter_are_checked():
    assert filtered_list(lookup()) is None
    assert filtered_list(lookup(limit=10)) is None
    assert filtered_list(HttpRequest("GET", "/api/v1/capital", "balanceQuery")) is None
    assert filtered_list(lookup(id=7, clientId=None)) == (SPEC, {"id": "7"})
    assert filtered_list(lookup(clientId="wd-a")) == (SPEC, {"clientId": "wd-a"})


def test_items_match_on_the_rendered_value():
    assert matches({"id": 7, "clientId": "wd-a"}, {"id": "7"})
    assert matches({"id": 7, "clientId": "wd-a"}, {"id": "7", "clientId": "wd-a"})
    assert not matches({"id": 7, "clientId": None}, {"clientId": "None"})
    assert not matches({"id": 70}, {"id": "7"})
    assert not matches("7", {"id": "7"})


def test_an_answer_is_honoured_only_when_every_item_matches():
    assert honoured([], {"id": "7"})
    assert honoured([{"id": 7}], {"id": "7"})
    assert not honoured([{"id": 7}, {"id": 6}], {"id": "7"})


def test_a_page_drops_the_filters_and_keeps_the_time_window():
    request = lookup(id=7, clientId="wd-7", limit=5, offset=3, **{"from": 100, "to": 200})
    assert page_request(request, SPEC, 40, 20).query == {"from": 100, "to": 200, "limit": 20, "offset": 40}


def test_search_stops_at_the_first_match_of_a_unique_id():
    history = History(10)
    found = search_history(history, lookup(id=6), SPEC, {"id": "6"}, page_size=3, max_pages=10)
    assert found == [{"id": 6, "clientId": "wd-6", "status": "pending"}]
    assert [q["offset"] for q in history.queries] == [0, 3]


def test_search_reads_to_the_end_for_a_client_id():
    history = History(10)
    history.items.append({"id": 0, "clientId": "wd-6", "status": "confirmed"})  # clientIds are not unique
    found = search_history(history, lookup(clientId="wd-6"), SPEC, {"clientId": "wd-6"}, page_size=4, max_pages=10)
    assert [w["id"] for w in found] == [6, 0]
    assert [q["offset"] for q in history.queries] == [0, 4, 8]


def test_an_item_seen_on_two_pages_is_returned_once():
    history = History(4)
    pages = iter([history.items[:2], history.items[1:3], history.items[3:]])
    found = search_history(lambda _r: Page(next(pages)), lookup(clientId="wd-3"), SPEC, {"clientId": "wd-3"},
                           page_size=2, max_pages=5)
    assert [w["id"] for w in found] == [3]


def test_not_found_at_the_end_of_the_history_is_an_empty_answer():
    assert search_history(History(5), lookup(id=99), SPEC, {"id": "99"}, page_size=2, max_pages=5) == []


def test_the_search_is_bounded_and_absence_is_not_claimed_past_the_bound():
    history = History(10)
    with pytest.raises(TransientError, match="absence not proven"):
        search_history(history, lookup(id=1), SPEC, {"id": "1"}, page_size=2, max_pages=3)
    assert len(history.queries) == 3


def test_the_page_size_never_exceeds_the_operations_maximum():
    history = History(3)
    search_history(history, lookup(id=1), SPEC, {"id": "1"}, page_size=5000, max_pages=1)
    assert history.queries[0]["limit"] == SPEC.max_limit
