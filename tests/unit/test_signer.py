"""Signing strings and the test vectors of notes/backpack-api.md section 1.3."""

from decimal import Decimal
from urllib.parse import parse_qsl, urlsplit

import pytest

from bpx_worker.arazzo import HttpRequest
from bpx_worker.errors import ConfigurationError
from bpx_worker.exchange.client import BackpackClient
from bpx_worker.exchange.signer import Signer, check_window, render, rendered, signing_string, verify

SEED = "nWGxne/9WmC6hEr0kuwsxERJxWl7MmkZcDusAxyuf2A="
API_KEY = "11qYAYKxCrfVS/7TyWQHOg7hcvPapiMlrwIaaPcHURo="
TS = 1750793021519

VECTORS = [
    ("balanceQuery", {}, TS,
     "UVvIby2z8iejhYkf+rghNIs771Hk9v0WW0Itog+QSwuW6DXUHkxo9skcVsYgLqt6LmftTDJ1cegvkkSKbfmCDQ=="),
    ("withdraw", {"symbol": "USDC", "quantity": "1.5", "address": "EXAMPLEADDR", "blockchain": "Solana",
                  "clientId": "wd-0001"}, TS,
     "MbdYtBGNyIjFzDHVlTVH9teFw4l4Hu03hxQnbySk7F9yX4wy/RgkfFssW6Q8KDo7QZA91fwO2WciW/W4YkV/AA=="),
    ("withdrawalQueryAll", {"id": 5479929}, TS,
     "57f9DbWkMsxxJmMM1VWoYnLV6Q9Zl3zpVdczM03Ij7erBSYAG8VKbvqJNBSf58OON+5S0H1Cbslt1T0sEfJQAg=="),
    ("withdrawalQueryAll", {"offset": 0, "limit": 100, "clientId": "wd-0001"}, TS,
     "B9bW/au75NzoWvUXNlYJDL2K+sdb122YPDCBNiyM2LiZRHS0xk8Zo053i4pCe1tF0Q3wQ+PFKfU5hKlFYnqGBw=="),
    ("orderCancel", {"symbol": "BTC_USDT", "orderId": 28}, 1614550000000,
     "wLQaGPszkXrEWaIm6RsnVLJv70Uuw62SXxmdso6cadUmR0NWzFhfhvuCWMl+jbBNJ5gZRfCPjvXI29H7JeW6Ag=="),
]


@pytest.mark.parametrize("instruction, params, ts, expected", VECTORS)
def test_signature_matches_vector(instruction, params, ts, expected):
    signer = Signer.from_secret(API_KEY, SEED)
    headers = signer.headers(instruction, params, window=5000, timestamp=ts)
    assert headers["X-SIGNATURE"] == expected
    assert headers["X-API-KEY"] == API_KEY
    assert headers["X-TIMESTAMP"] == str(ts)
    assert headers["X-WINDOW"] == "5000"
    assert verify(API_KEY, signing_string(instruction, params, ts, 5000), expected)


def test_signing_string_sorts_keys_and_lowercases_booleans():
    text = signing_string("withdraw", {"symbol": "SOL", "autoBorrow": True, "address": "A", "skip": None}, 1, 5000)
    assert text == "instruction=withdraw&address=A&autoBorrow=true&symbol=SOL&timestamp=1&window=5000"


def test_no_params_signs_instruction_timestamp_window_only():
    assert signing_string("balanceQuery", {}, 7, 60000) == "instruction=balanceQuery&timestamp=7&window=60000"


def test_each_request_gets_its_own_signature():
    signer = Signer.from_secret(API_KEY, SEED)
    one = signer.headers("balanceQuery", {}, timestamp=TS)["X-SIGNATURE"]
    two = signer.headers("withdrawalQueryAll", {"id": 1}, timestamp=TS)["X-SIGNATURE"]
    assert one != two


def test_clock_supplies_the_timestamp():
    signer = Signer.from_secret(API_KEY, SEED, clock=lambda: 1700000000.5)
    assert signer.headers("balanceQuery", {})["X-TIMESTAMP"] == "1700000000500"


@pytest.mark.parametrize("window", [0, 60001, -1, True, 1.5])
def test_window_out_of_range_is_refused(window):
    with pytest.raises(ValueError, match="window"):
        check_window(window)


def test_mismatched_key_pair_is_refused():
    other, _ = Signer.generate()
    with pytest.raises(ConfigurationError, match="does not match"):
        Signer.from_secret(other.api_key, SEED)


@pytest.mark.parametrize("secret, reason", [("not base64!", "base64"), ("AAAA", "32 bytes")])
def test_bad_secret_names_the_problem(secret, reason):
    with pytest.raises(ConfigurationError, match=reason):
        Signer.from_secret(API_KEY, secret)


def test_repr_never_shows_the_secret():
    signer = Signer.from_secret(API_KEY, SEED)
    assert SEED not in repr(signer)


def test_wrong_signature_does_not_verify():
    message = signing_string("balanceQuery", {}, TS, 5000)
    assert not verify(API_KEY, message, VECTORS[1][3])
    assert not verify(API_KEY, message, "garbage")


def test_values_render_as_the_exchange_reads_them():
    assert rendered({"autoBorrow": True, "autoLendRedeem": False, "id": 7, "clientId": "wd-1", "skip": None}) == {
        "autoBorrow": "true", "autoLendRedeem": "false", "id": "7", "clientId": "wd-1"}
    assert render(True) == "true" and render(Decimal("1.50")) == "1.50"


def test_the_signing_string_is_built_from_the_rendered_values():
    params = {"symbol": "USDC", "autoBorrow": True, "skip": None}
    assert signing_string("maxWithdrawalQuantity", params, 1, 5000) == signing_string(
        "maxWithdrawalQuantity", rendered(params), 1, 5000)


def test_the_query_on_the_wire_is_the_query_that_was_signed():
    """What the exchange parses from the URL verifies against the signature (booleans `true`, not `True`)."""
    signer = Signer.from_secret(API_KEY, SEED)
    client = BackpackClient("http://127.0.0.1:9", signer)
    request = HttpRequest("GET", "/api/v1/account/limits/withdrawal", "maxWithdrawalQuantity",
                          {"symbol": "USDC", "autoBorrow": True, "autoLendRedeem": False, "skip": None})
    prepared, _ = client._prepare(request)
    received = dict(parse_qsl(urlsplit(prepared.url).query, strict_parsing=True))
    assert received == {"symbol": "USDC", "autoBorrow": "true", "autoLendRedeem": "false"}
    headers = prepared.headers
    message = signing_string("maxWithdrawalQuantity", received, int(headers["X-TIMESTAMP"]), int(headers["X-WINDOW"]))
    assert verify(API_KEY, message, headers["X-SIGNATURE"])
