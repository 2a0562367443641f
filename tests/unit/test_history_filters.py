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
    read_shared,
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


# --- one read answering many filtered reads (the poll rounds) -----------------------------------------


class TimedHistory:
    """A history that honours `from` (created ms), pages newest first, and records every query."""

    def __init__(self, count: int, created_ms: int = 1_000):
        self.items = [{"id": n, "clientId": f"wd-{n}", "status": "pending", "createdMs": created_ms + n}
                      for n in range(count, 0, -1)]
        self.queries: list[dict[str, Any]] = []

    def __call__(self, request: HttpRequest) -> Page:
        self.queries.append(dict(request.query))
        since = request.query.get("from", 0)
        listed = [item for item in self.items if item["createdMs"] >= since]
        offset, limit = request.query["offset"], request.query["limit"]
        return Page(listed[offset:offset + limit])


def test_one_paged_read_answers_every_request_with_the_items_its_own_filters_match():
    history = TimedHistory(25)
    history.items[3]["status"] = "confirmed"  # id 22
    shared = read_shared(history, [lookup(id=22), lookup(id=3), lookup(clientId="wd-9")], since_ms=1_000,
                         page_size=10, max_pages=5)
    assert shared.answers == [[history.items[3]], [history.items[22]], [history.items[16]]]
    # Pages from `from` on, without the filters, until a short page: 10 + 10 + 5 items.
    assert history.queries == [{"from": 1_000, "limit": 10, "offset": 0}, {"from": 1_000, "limit": 10, "offset": 10},
                               {"from": 1_000, "limit": 10, "offset": 20}]
    assert shared.page is not None and len(shared.page.body) == 5


def test_a_request_absent_from_a_complete_read_gets_the_empty_answer_a_filtered_read_gives():
    history = TimedHistory(4)
    shared = read_shared(history, [lookup(id=2), lookup(id=99)], since_ms=0, page_size=10, max_pages=3)
    assert shared.answers == [[history.items[2]], []]
    assert len(history.queries) == 1


def test_an_incomplete_read_answers_only_what_a_unique_filter_found():
    history = TimedHistory(50)
    shared = read_shared(history, [lookup(id=45), lookup(id=2), lookup(clientId="wd-48")], since_ms=0,
                         page_size=10, max_pages=2)
    # 20 newest items read, the end not reached: id 45 is found; id 2 may be further on (not proven absent);
    # clientId is not unique, so another match may be further on too.
    assert shared.answers == [[history.items[5]], None, None]
    assert len(history.queries) == 2


def test_items_seen_twice_while_the_list_shifts_are_answered_once():
    history = TimedHistory(12)

    def shifting(request: HttpRequest) -> Page:
        page = history(request)
        if len(history.queries) == 1:  # a new withdrawal arrives between the pages: the old ones shift by one
            history.items.insert(0, {"id": 13, "clientId": "wd-13", "status": "pending", "createdMs": 2_000})
        return page

    shared = read_shared(shifting, [lookup(id=3)], since_ms=0, page_size=10, max_pages=5)
    assert shared.answers == [[{"id": 3, "clientId": "wd-3", "status": "pending", "createdMs": 1_003}]]


def test_requests_that_are_not_plain_filtered_reads_are_left_to_be_sent_alone():
    history = TimedHistory(3)
    balances = HttpRequest("GET", "/api/v1/capital", "balanceQuery")
    windowed = lookup(id=2, **{"from": 5})  # its own time filter: its answer is not the shared read's
    unfiltered = lookup()
    shared = read_shared(history, [balances, windowed, unfiltered], since_ms=0, page_size=10, max_pages=2)
    assert shared.answers == [None, None, None] and shared.page is None and history.queries == []
    mixed = read_shared(history, [balances, lookup(id=2)], since_ms=0, page_size=10, max_pages=2)
    assert mixed.answers == [None, [history.items[1]]]


def test_a_read_that_is_not_a_list_is_transient():
    with pytest.raises(TransientError):
        read_shared(lambda request: Page({"code": "x"}), [lookup(id=1)], since_ms=0, page_size=10, max_pages=2)
