"""Edge validation of withdrawal requests: worker.request."""

from __future__ import annotations

from decimal import Decimal

import pytest
from pydantic import SecretStr, ValidationError

from bpx_worker.errors import InvalidRequest
from bpx_worker.withdrawal.request import TOKEN_REASON, SafetyLimits, canonical_quantity, parse_request

ADDRESS = "5ZWj7a1f8tWkjBESHKgrLmXshuXxqeY9SYcfbshpAqPG"
OTHER_SOLANA = "EPjFWdd5AufqSSqeM2qN1xzybapC8G4wEGGkZwyTDt1v"  # the USDC mint
EVM_ADDRESS = "0xA0b86991c6218b36c1d19D4a2e9Eb0cE3606eB48"  # the USDC contract on Ethereum
TOKEN = "739201"  # a valid-looking 2FA token that must never leak
VALID = {"symbol": "USDC", "blockchain": "Solana", "address": ADDRESS, "quantity": "1500.25"}
MISSING = object()  # marks a key to delete from VALID in a table row


def with_(**changes):
    """VALID with some keys replaced, or removed when set to MISSING."""
    data = dict(VALID)
    for key, value in changes.items():
        if value is MISSING:
            data.pop(key, None)
        else:
            data[key] = value
    return data


def refused(data, limits=None) -> dict[str, str]:
    with pytest.raises(InvalidRequest) as excinfo:
        parse_request(data, limits)
    return excinfo.value.errors


# --- valid requests ---------------------------------------------------------


def test_valid_request_parses_with_exact_values():
    request = parse_request(with_(idempotency_key="wd-0001_a", two_factor_token=TOKEN, window=5000))
    assert request.symbol == "USDC"
    assert request.blockchain == "Solana"
    assert request.address == ADDRESS
    assert request.quantity == Decimal("1500.25")
    assert str(request.quantity) == "1500.25"
    assert request.idempotency_key == "wd-0001_a"
    assert request.two_factor_token.get_secret_value() == TOKEN
    assert request.window == 5000


def test_optional_fields_default_to_none():
    request = parse_request(VALID)
    assert (request.idempotency_key, request.two_factor_token, request.window) == (None, None, None)


def test_smallest_quantity_keeps_its_exact_value():
    request = parse_request(with_(quantity="0.000000000000000001"))
    assert request.quantity == Decimal("1E-18")
    assert request.public_inputs()["quantity"] == "0.000000000000000001"


def test_largest_quantity_form_is_accepted():
    text = "9" * 20 + "." + "9" * 18
    assert format(parse_request(with_(quantity=text)).quantity, "f") == text


@pytest.mark.parametrize("symbol", ["kPEPE", "BRK.B.US", "0G"])
def test_unusual_custody_asset_forms_are_accepted(symbol):
    assert parse_request(with_(symbol=symbol)).symbol == symbol


def test_public_inputs_are_plain_and_token_free():
    request = parse_request(with_(quantity="1500.25", two_factor_token=TOKEN, window=60000))
    assert request.public_inputs() == {
        "symbol": "USDC",
        "blockchain": "Solana",
        "address": ADDRESS,
        "quantity": "1500.25",
        "window": 60000,
    }


def test_public_inputs_omit_window_when_unset():
    assert "window" not in parse_request(VALID).public_inputs()


@pytest.mark.parametrize(
    ("given", "expected"),
    [
        (5, "5"),
        (Decimal("1E+3"), "1000"),
        (Decimal("0.10"), "0.10"),
        (Decimal("1E-18"), "0.000000000000000001"),
    ],
)
def test_python_callers_may_pass_int_or_decimal(given, expected):
    request = parse_request(with_(quantity=given))
    assert request.public_inputs()["quantity"] == expected
    assert "E" not in request.public_inputs()["quantity"]


def test_window_digit_string_is_accepted_for_the_cli():
    assert parse_request(with_(window="2500")).window == 2500


def test_secretstr_token_is_accepted():
    request = parse_request(with_(two_factor_token=SecretStr(TOKEN)))
    assert request.two_factor_token.get_secret_value() == TOKEN


def test_request_is_immutable():
    request = parse_request(VALID)
    with pytest.raises(ValidationError):
        request.quantity = Decimal("999999")


# --- refused inputs ---------------------------------------------------------

BAD = [
    # missing required fields
    ("missing symbol", with_(symbol=MISSING), {"symbol": "required"}),
    ("missing blockchain", with_(blockchain=MISSING), {"blockchain": "required"}),
    ("missing address", with_(address=MISSING), {"address": "required"}),
    ("missing quantity", with_(quantity=MISSING), {"quantity": "required"}),
    ("null symbol", with_(symbol=None), {"symbol": "required"}),
    ("null quantity", with_(quantity=None), {"quantity": "required"}),
    ("all missing", {},
     {"symbol": "required", "blockchain": "required", "address": "required", "quantity": "required"}),
    # symbol
    ("empty symbol", with_(symbol=""), {"symbol": "must not be empty"}),
    ("lowercase symbol", with_(symbol="usdc"), {"symbol": "unknown asset 'usdc' (did you mean 'USDC'?)"}),
    ("unknown symbol", with_(symbol="XYZ"), {"symbol": "unknown asset 'XYZ'"}),
    ("symbol with space", with_(symbol="US DC"), {"symbol": "must be an asset code"}),
    ("symbol with slash", with_(symbol="USDC/SOL"), {"symbol": "must be an asset code"}),
    ("symbol with unicode", with_(symbol="ÜSDC"), {"symbol": "must be an asset code"}),
    ("symbol with empty dot part", with_(symbol="BRK..US"), {"symbol": "must be an asset code"}),
    ("symbol over-long", with_(symbol="A" * 33), {"symbol": "at most 32 characters"}),
    ("symbol not a string", with_(symbol=123), {"symbol": "must be a string"}),
    # blockchain
    ("unknown blockchain", with_(blockchain="Mars"), {"blockchain": "unknown blockchain; expected one of Solana"}),
    ("blockchain wrong case", with_(blockchain="solana"), {"blockchain": "must be spelled exactly 'Solana'"}),
    ("empty blockchain", with_(blockchain=""), {"blockchain": "unknown blockchain"}),
    ("blockchain not a string", with_(blockchain=["Solana"]), {"blockchain": "must be a string"}),
    # address
    ("empty address", with_(address=""), {"address": "must not be empty"}),
    ("address with space", with_(address="abc def"), {"address": "must not contain whitespace"}),
    ("address with tab", with_(address="abc\tdef"), {"address": "must not contain whitespace"}),
    ("address with newline", with_(address="abc\n"), {"address": "must not contain whitespace"}),
    ("address with NUL", with_(address="abc\x00def"), {"address": "must not contain control characters"}),
    ("address with DEL", with_(address="abc\x7fdef"), {"address": "must not contain control characters"}),
    ("address non-ASCII", with_(address="abcdéf"), {"address": "must be printable ASCII"}),
    ("address zero-width space", with_(address="abc\u200bdef"), {"address": "must be printable ASCII"}),
    ("address over-long", with_(address="a" * 129), {"address": "at most 128 characters"}),
    ("address not URL-safe", with_(address="abc&quantity=9"), {"address": "only letters, digits, '.', '_' and '-'"}),
    ("address with colon", with_(address="bitcoincash:qq"), {"address": "only letters, digits, '.', '_' and '-'"}),
    ("address a dot", with_(address="."), {"address": "not a valid Solana address"}),
    ("EVM address on Solana", with_(address=EVM_ADDRESS), {"address": "not a valid Solana address"}),
    ("Solana address on Ethereum", with_(blockchain="Ethereum"), {"address": "not a valid Ethereum address"}),
    ("EVM address with a broken checksum", with_(blockchain="Base", address=EVM_ADDRESS.replace("A0b8", "a0b8")),
     {"address": "EIP-55 checksum"}),
    ("Bitcoin address on Litecoin", with_(blockchain="Litecoin", address="1A1zP1eP5QGefi2DMPTfTL5SLmv7DivfNa"),
     {"address": "not a valid Litecoin address"}),
    # quantity
    ("quantity zero", with_(quantity="0"), {"quantity": "must be greater than zero"}),
    ("quantity zero with decimals", with_(quantity="0.000"), {"quantity": "must be greater than zero"}),
    ("quantity negative", with_(quantity="-1"), {"quantity": "without a sign"}),
    ("quantity plus sign", with_(quantity="+1"), {"quantity": "must not have a '+' sign"}),
    ("quantity exponent", with_(quantity="1e3"), {"quantity": "must not use exponent notation"}),
    ("quantity negative exponent", with_(quantity="1E-2"), {"quantity": "must not use exponent notation"}),
    ("quantity NaN", with_(quantity="NaN"), {"quantity": "must be a finite number"}),
    ("quantity Infinity", with_(quantity="Infinity"), {"quantity": "must be a finite number"}),
    ("quantity inf", with_(quantity="inf"), {"quantity": "must be a finite number"}),
    ("quantity two dots", with_(quantity="1.2.3"), {"quantity": "plain digits with at most one '.'"}),
    ("quantity empty", with_(quantity=""), {"quantity": "must not be empty"}),
    ("quantity leading space", with_(quantity=" 1"), {"quantity": "must not contain whitespace"}),
    ("quantity underscore", with_(quantity="1_000"), {"quantity": "must not contain underscores"}),
    ("quantity hex", with_(quantity="0x10"), {"quantity": "plain digits with at most one '.'"}),
    ("quantity trailing dot", with_(quantity="5."), {"quantity": "plain digits with at most one '.'"}),
    ("quantity leading dot", with_(quantity=".5"), {"quantity": "plain digits with at most one '.'"}),
    ("quantity non-ASCII digits", with_(quantity="\u0663"), {"quantity": "plain digits with at most one '.'"}),
    ("quantity float", with_(quantity=1.5), {"quantity": "must be a decimal string, not a float"}),
    ("quantity 19 decimals", with_(quantity="0." + "0" * 18 + "1"), {"quantity": "at most 18 decimal places"}),
    ("quantity 21 integer digits", with_(quantity="1" * 21), {"quantity": "at most 20 integer digits"}),
    ("quantity bool", with_(quantity=True), {"quantity": "not a boolean"}),
    ("quantity list", with_(quantity=["1"]), {"quantity": "must be a decimal string"}),
    ("quantity int zero", with_(quantity=0), {"quantity": "must be greater than zero"}),
    ("quantity int 21 digits", with_(quantity=10**20), {"quantity": "at most 20 integer digits"}),
    ("quantity Decimal NaN", with_(quantity=Decimal("NaN")), {"quantity": "must be a finite number"}),
    ("quantity Decimal negative", with_(quantity=Decimal("-1")), {"quantity": "must be greater than zero"}),
    ("quantity Decimal huge exponent", with_(quantity=Decimal("1E+999999")), {"quantity": "at most 20 integer digits"}),
    ("quantity Decimal 19 places", with_(quantity=Decimal("1E-19")), {"quantity": "at most 18 decimal places"}),
    # idempotency key
    ("key with space", with_(idempotency_key="wd 1"), {"idempotency_key": "only letters, digits, '_' and '-'"}),
    ("key with slash", with_(idempotency_key="wd/1"), {"idempotency_key": "only letters, digits, '_' and '-'"}),
    ("key too long", with_(idempotency_key="k" * 65), {"idempotency_key": "at most 64 characters"}),
    ("key empty", with_(idempotency_key=""), {"idempotency_key": "must not be empty"}),
    ("key not a string", with_(idempotency_key=7), {"idempotency_key": "must be a string"}),
    # window
    ("window zero", with_(window=0), {"window": "between 1 and 60000 ms"}),
    ("window above max", with_(window=60001), {"window": "between 1 and 60000 ms"}),
    ("window negative", with_(window=-5), {"window": "between 1 and 60000 ms"}),
    ("window text", with_(window="abc"), {"window": "whole number of milliseconds"}),
    ("window float", with_(window=5000.0), {"window": "whole number of milliseconds"}),
    ("window bool", with_(window=True), {"window": "not a boolean"}),
    # two-factor token
    ("token over-long", with_(two_factor_token="1" * 65), {"two_factor_token": TOKEN_REASON}),
    ("token with symbols", with_(two_factor_token="12-34!"), {"two_factor_token": TOKEN_REASON}),
    ("token empty", with_(two_factor_token=""), {"two_factor_token": TOKEN_REASON}),
    ("token not a string", with_(two_factor_token=123456), {"two_factor_token": TOKEN_REASON}),
    # shape
    ("unknown extra field", with_(amount="1"), {"amount": "unknown field"}),
    ("unknown camelCase field", with_(clientId="x"), {"clientId": "unknown field"}),
    (
        "several bad fields",
        with_(symbol="", blockchain="solana", quantity="1e3", window=0, extra=1),
        {
            "symbol": "must not be empty",
            "blockchain": "spelled exactly 'Solana'",
            "quantity": "exponent",
            "window": "between 1 and 60000",
            "extra": "unknown field",
        },
    ),
]


@pytest.mark.parametrize(("data", "expected"), [row[1:] for row in BAD], ids=[row[0] for row in BAD])
def test_bad_input_names_each_field_and_why(data, expected):
    errors = refused(data)
    assert set(errors) == set(expected)
    for field, fragment in expected.items():
        assert fragment in errors[field], (field, errors[field])
        # pydantic's own wording never reaches the caller
        assert "Value error" not in errors[field]


def test_bad_table_is_wide_enough():
    assert len({row[0] for row in BAD}) == len(BAD) >= 35


def test_exception_message_lists_every_field():
    with pytest.raises(InvalidRequest) as excinfo:
        parse_request(with_(symbol="XYZ", quantity="0"))
    assert str(excinfo.value) == (
        "invalid withdrawal request: symbol: unknown asset 'XYZ'; quantity: must be greater than zero"
    )


def test_non_mapping_is_refused():
    assert refused(["USDC", "Solana"]) == {"request": "must be a mapping of field names to values"}


def test_odd_unknown_key_is_labelled_safely():
    errors = refused(with_(**{"bad\nkey": 1}))
    assert errors == {"'bad\\nkey'": "unknown field"}


# --- safety limits ----------------------------------------------------------

LIMITS = SafetyLimits(
    max_quantity={"USDC": Decimal("1000")},
    allowed_destinations=frozenset({f"Solana:{ADDRESS}", EVM_ADDRESS}),
)


def test_quantity_over_limit_is_refused():
    assert refused(with_(quantity="1000.000000000000000001"), LIMITS) == {
        "quantity": "exceeds the per-job limit of 1000 USDC"
    }


def test_quantity_at_limit_passes():
    assert parse_request(with_(quantity="1000"), LIMITS).quantity == Decimal("1000")


def test_symbol_without_limit_is_uncapped():
    request = parse_request(with_(symbol="SOL", quantity="99999999"), LIMITS)
    assert request.quantity == Decimal("99999999")


def test_destination_not_on_allow_list_is_refused():
    assert refused(with_(address=OTHER_SOLANA, quantity="1"), LIMITS) == {
        "address": "not on the destination allow-list"
    }


def test_qualified_entry_allows_only_its_chain():
    # Eclipse writes addresses as Solana does, so only the allow-list tells them apart.
    assert refused(with_(blockchain="Eclipse", quantity="1"), LIMITS) == {
        "address": "not on the destination allow-list"
    }


def test_bare_entry_allows_any_chain():
    for chain in ("Ethereum", "Base"):
        assert parse_request(with_(blockchain=chain, address=EVM_ADDRESS, quantity="1"), LIMITS).blockchain == chain


def test_both_limits_reported_together():
    assert refused(with_(address=OTHER_SOLANA, quantity="5000"), LIMITS) == {
        "quantity": "exceeds the per-job limit of 1000 USDC",
        "address": "not on the destination allow-list",
    }


def test_limits_are_checked_only_after_the_request_is_valid():
    assert refused(with_(address=OTHER_SOLANA, quantity="1e9"), LIMITS) == {
        "quantity": "must not use exponent notation"
    }


def test_limit_text_is_plain_decimal():
    limits = SafetyLimits(max_quantity={"USDC": Decimal("1E+3")})
    assert refused(with_(quantity="1001"), limits) == {"quantity": "exceeds the per-job limit of 1000 USDC"}


def test_nan_limit_is_refused_at_configuration():
    with pytest.raises(ValidationError):
        SafetyLimits(max_quantity={"USDC": Decimal("NaN")})


# --- the 2FA token never leaks ----------------------------------------------


def test_token_absent_from_repr_and_str_of_model():
    request = parse_request(with_(two_factor_token=TOKEN))
    assert TOKEN not in repr(request)
    assert TOKEN not in str(request)
    assert TOKEN not in request.model_dump_json()
    assert TOKEN not in str(request.public_inputs())


def test_token_absent_from_errors_when_another_field_is_bad():
    with pytest.raises(InvalidRequest) as excinfo:
        parse_request(with_(quantity="NaN", two_factor_token=TOKEN))
    assert excinfo.value.errors == {"quantity": "must be a finite number"}
    assert TOKEN not in str(excinfo.value)
    assert TOKEN not in repr(excinfo.value)


@pytest.mark.parametrize("bad_token", ["SECRET-739201", "S3CR3T" * 11, "pass word"])
def test_bad_token_value_never_echoed(bad_token):
    with pytest.raises(InvalidRequest) as excinfo:
        parse_request(with_(two_factor_token=bad_token, symbol="XYZ"))
    error = excinfo.value
    assert error.errors == {"symbol": "unknown asset 'XYZ'", "two_factor_token": TOKEN_REASON}
    assert bad_token not in str(error)
    assert bad_token not in repr(error)
    assert all(bad_token not in f"{key}{value}" for key, value in error.errors.items())


def test_invalid_request_does_not_chain_the_validation_error():
    # pydantic's ValidationError text holds raw inputs; it must not ride along
    # as __cause__ or __context__ into logged tracebacks.
    with pytest.raises(InvalidRequest) as excinfo:
        parse_request(with_(two_factor_token="SECRET-739201"))
    assert excinfo.value.__cause__ is None
    assert excinfo.value.__context__ is None


# --- what makes two submissions the same request -----------------------------


@pytest.mark.parametrize("quantity", ["1", "1.0", "1.000", 1, Decimal("1.00"), Decimal("1E+0")])
def test_fingerprint_compares_quantities_by_value(quantity):
    assert parse_request(with_(quantity=quantity)).fingerprint() == parse_request(with_(quantity="1")).fingerprint()


def test_fingerprint_keeps_every_one_of_38_digits():
    # Decimal.normalize() would round to 28 digits and make these two equal.
    one = parse_request(with_(quantity="99999999999999999999.999999999999999998")).fingerprint()
    two = parse_request(with_(quantity="99999999999999999999.999999999999999999")).fingerprint()
    assert one["quantity"] == "99999999999999999999.999999999999999998"
    assert one != two


def test_fingerprint_names_the_fields_of_the_request_and_nothing_secret():
    request = parse_request(with_(quantity="12.50", two_factor_token=TOKEN, window=5000, idempotency_key="k1"))
    assert request.fingerprint() == {"symbol": "USDC", "blockchain": "Solana", "address": ADDRESS,
                                     "quantity": "12.5", "window": 5000}
    assert TOKEN not in repr(request.fingerprint())
    assert request.fingerprint() == parse_request(with_(quantity="12.5", window=5000)).fingerprint()


@pytest.mark.parametrize("change", [{"quantity": "2"}, {"address": OTHER_SOLANA}, {"symbol": "SOL"},
                                    {"blockchain": "Eclipse"}, {"window": 4000}])
def test_fingerprint_differs_when_any_field_differs(change):
    assert parse_request(with_(**change)).fingerprint() != parse_request(VALID).fingerprint()


@pytest.mark.parametrize(("given", "expected"), [("100", "100"), ("100.00", "100"), ("0.10", "0.1"),
                                                 ("0.000000000000000001", "0.000000000000000001")])
def test_canonical_quantity_is_plain_without_trailing_zeros(given, expected):
    assert canonical_quantity(Decimal(given)) == expected
