"""Destination addresses are checked against the format of their blockchain (worker/withdrawal/addresses.py)."""

from __future__ import annotations

import bech32m
import pytest

from bpx_worker.config.documents import blockchain_names
from bpx_worker.errors import InvalidRequest
from bpx_worker.withdrawal.addresses import ADDRESS_RULES, address_problem
from bpx_worker.withdrawal.request import parse_request

# Well-known public addresses (token contracts, mints, burn and genesis addresses,
# the examples of the specifications) and addresses from bip_utils' test vectors.
USDC_ETHEREUM = "0xA0b86991c6218b36c1d19D4a2e9Eb0cE3606eB48"
USDC_SOLANA_MINT = "EPjFWdd5AufqSSqeM2qN1xzybapC8G4wEGGkZwyTDt1v"

VALID = {
    "Ethereum": [
        USDC_ETHEREUM,
        "0xdAC17F958D2ee523a2206206994597C13D831ec7",  # USDT
        "0xC02aaA39b223FE8D0A0e5C4F27eAD9083C756Cc2",  # WETH
        "0x000000000000000000000000000000000000dEaD",  # the burn address
        # EIP-55's own test vectors
        "0x5aAeb6053F3E94C9b9A09f33669435E7Ef1BeAed",
        "0xfB6916095ca1df60bB79Ce92cE3Ea74c37c5d359",
        "0xdbF03B407c01E7cD3CBea99509d93f8DDDC8C6FB",
        "0xD1220A0cf47c7B9Be7A2E6BA89F429762e7b9aDb",
        # all lower or all upper case carries no checksum and is accepted as it is
        USDC_ETHEREUM.lower(),
        "0x" + USDC_ETHEREUM[2:].upper(),
    ],
    "Arbitrum": ["0xaf88d065e77c8cC2239327C5EDb3A432268e5831"],  # native USDC
    "Base": ["0x833589fCD6eDb6E08f4c7C32D4f71b54bdA02913"],  # native USDC
    "Optimism": ["0x0b2C639c533813f4Aa9D7837CAf62653d097Ff85"],  # native USDC
    "Polygon": ["0x3c499c542cEF5E3811e1192ce70d8cC03d5c3359"],  # native USDC
    "Bsc": ["0x55d398326f99059fF775485246999027B3197955"],  # BSC-USD
    "Avalanche": ["0xB97EF9Ef8734C71904D8002F8b6Bc66Dd9c48a6E"],  # native USDC
    "Solana": [
        USDC_SOLANA_MINT,
        "So11111111111111111111111111111111111111112",  # wrapped SOL
        "5ZWj7a1f8tWkjBESHKgrLmXshuXxqeY9SYcfbshpAqPG",
    ],
    "Eclipse": [USDC_SOLANA_MINT],
    "Fogo": [USDC_SOLANA_MINT],
    "Bitcoin": [
        "1A1zP1eP5QGefi2DMPTfTL5SLmv7DivfNa",  # the genesis block's coinbase
        "3J98t1WpEZ73CNmQviecrnyiWrnqRhWNLy",  # BIP-13's example
        "bc1qw508d6qejxtdg4y5r3zarvary0c5xw7kv8f3t4",  # BIP-173, P2WPKH
        "BC1QW508D6QEJXTDG4Y5R3ZARVARY0C5XW7KV8F3T4",  # the same in upper case
        "bc1qrp33g0q5c5txsp9arysrx4k6zdkfs4nce4xj0gdcccefvpysxf3qccfmv3",  # BIP-173, P2WSH
        "bc1p5cyxnuxmeuwuvkwfem96lqzszd02n6xdcjrs20cac6yqjjwudpxqkedrcr",  # BIP-86, taproot
    ],
    "Litecoin": [
        "LX4YojYdeBk3TtUcryCcgAqYxjicKfK7AD",
        "LVYs6bw81eLpkqGtsHWDNFbssZPPdNcL4G",
        bech32m.encode("ltc", 0, bytes.fromhex("751e76e8199196d454941c45d1b3a323f1433bd6")),
    ],
    "Dogecoin": ["DAcDAtJRztxBHyA6D6h8du1HguyTR43Mas", "DTdrvUHbk5oMyi62tM7LqrjAcXfqB7eaad"],
    "Zcash": ["t1Msw6c7mLQbPnHRyTC6NB3y2U2HjcrHiRM", "t1T6t4H4zerrZRtkPVuu7fgVBCjRjNMY295"],
    "BitcoinCash": [
        # the CashAddr spec's example, 1BpEi6DfDAUFd7GtittLSdBeYJvcoaVggu in legacy form
        "qpm2qsznhks23z7629mms6s4cwef74vcwvy22gdx6a",
        "qrvcdmgpk73zyfd8pmdl9wnuld36zh9n4gms8s0u59",
        "QPM2QSZNHKS23Z7629MMS6S4CWEF74VCWVY22GDX6A",
    ],
    "Tron": ["TR7NHqjeKQxGTCi8q8ZY4pL8otSzgjLj6t"],  # USDT (TRC-20)
    "XRP": ["rHb9CJAWyB4rj91VRWn96DkukG4bwdtyTh"],  # the genesis account
    "Cardano": [
        # CIP-19's example base address
        "addr1qx2fxv2umyhttkxyxp8x0dlpdt3k6cwng5pxj3jhsydzer3n0d3vllmyqwsx5wktcd8cc3sq835lu7drv2xwl2wywfgse35a3x",
        "addr1qy82f98tsgc7wpct6rtf0t6jgf0qg0s2nsrmqyj7q8wdynrzaps0ja8tu5qaglxl5pgcf70try8realspu89340mm3hq6jjmds",
        "Ae2tdPwUPEZMchqp4zjkMo6R44DNT9rmh1KDK7AmRVXzG1mH3jWae217HWo",  # Byron
    ],
    "Near": ["aurora", "wrap.near", "usdt.tether-token.near",
             "98793cd91a3f870fb126f66285808c7e094afcfc4eda8a970f6648cdf0dbd6de"],
    "Aptos": ["0xbae207659db88bea0cbead6da0ed00aac12edcdda169e591cd41c94180b46f3b"],
    "Sui": ["0xdba34672e30cb065b1f93e3ab55318768fd6fef66c15942c9f7cb846e2f900e7"],
    "Sei": [
        USDC_ETHEREUM,
        # a Cosmos-form account: 20 bytes in bech32 under "sei"
        bech32m.codecs.bech32_encode("sei", bytes(bech32m.codecs.convertbits(bytes(range(1, 21)), 8, 5)),
                                     bech32m.codecs.Encoding.BECH32),
    ],
    "EqualsMoney": ["GB33BUKB20201555555555"],
}

INVALID = [
    # the cases of the audit
    ("Solana", ".", "32 bytes"),
    ("Solana", USDC_ETHEREUM, "base58"),
    ("Ethereum", USDC_SOLANA_MINT, "0x followed by 40 hex digits"),
    ("Ethereum", ".", "0x followed by 40 hex digits"),
    # EVM
    ("Ethereum", "0x" + USDC_ETHEREUM[2:].replace("A0b8", "a0b8"), "EIP-55"),
    ("Base", USDC_ETHEREUM[:-1], "40 hex digits"),
    ("Arbitrum", USDC_ETHEREUM[2:], "0x followed by"),
    ("Polygon", "0x" + "0" * 40, "zero address"),
    ("Bsc", "0X" + USDC_ETHEREUM[2:], "0x followed by"),
    # Solana family
    ("Solana", USDC_SOLANA_MINT[:-2], "32 bytes"),
    ("Solana", "11111111111111111111111111111111", "all-zero"),
    ("Fogo", "0OIl" + USDC_SOLANA_MINT[4:], "base58"),
    # Bitcoin and its kin
    ("Bitcoin", "1A1zP1eP5QGefi2DMPTfTL5SLmv7DivfNb", "checksum"),
    ("Bitcoin", "LX4YojYdeBk3TtUcryCcgAqYxjicKfK7AD", "wrong version byte"),
    ("Bitcoin", "bc1qw508d6qejxtdg4y5r3zarvary0c5xw7kv8f3t5", "segwit"),
    ("Bitcoin", "bc1qw508d6qejxtdg4y5r3zarvary0c5xw7KV8F3T4", "segwit"),  # mixed case
    ("Bitcoin", bech32m.encode("bc", 2, bytes(range(1, 33))), "witness version 2"),
    ("Bitcoin", "1111111111111111111114oLvT2", "all-zero hash"),
    ("Litecoin", "1A1zP1eP5QGefi2DMPTfTL5SLmv7DivfNa", "wrong version byte"),
    ("Litecoin", "bc1qw508d6qejxtdg4y5r3zarvary0c5xw7kv8f3t4", "checksum"),
    ("Dogecoin", "1A1zP1eP5QGefi2DMPTfTL5SLmv7DivfNa", "wrong version byte"),
    ("Zcash", "1A1zP1eP5QGefi2DMPTfTL5SLmv7DivfNa", "wrong version byte"),
    ("BitcoinCash", "1BpEi6DfDAUFd7GtittLSdBeYJvcoaVggu", "cannot be told apart from Bitcoin"),
    ("BitcoinCash", "qpm2qsznhks23z7629mms6s4cwef74vcwvy22gdx6q", "checksum"),
    ("BitcoinCash", "qpm2qsznhks23z7629mms6s4cwef74vcwvY22GDX6A", "CashAddr"),
    # Tron, XRP
    ("Tron", "TR7NHqjeKQxGTCi8q8ZY4pL8otSzgjLj6u", "checksum"),
    ("Tron", "1A1zP1eP5QGefi2DMPTfTL5SLmv7DivfNa", "wrong version byte"),
    ("Tron", "T9yD14Nj9j7xAB4dbGeiX9h8unkKHxuWwb", "all-zero hash"),  # Tron's black hole
    ("XRP", "rHb9CJAWyB4rj91VRWn96DkukG4bwdtyTj", "checksum"),
    ("XRP", "1A1zP1eP5QGefi2DMPTfTL5SLmv7DivfNa", "classic XRP address"),
    ("XRP", "rrrrrrrrrrrrrrrrrrrrrhoLvTp", "all-zero hash"),  # ACCOUNT_ZERO
    # Cardano (the invalid strings are from bip_utils' test vectors)
    ("Cardano",
     "addr1q9hamruwl3x78q8n6apv5xajjp4rnz40k8hadgw83lm2f7gglc6ae0xz4vr3mv2s67fau2ctn3qlgyre6d69ns5qyyxqujzuv3",
     "checksum"),
    ("Cardano",
     "addr1qrgy2x7fadda4ylqe9t0udkwa6ulwuhxuuuclf3sx79hh3nxt6vygfc53zr6vv3fj3f3y335pv34e98paxy5xu9ydmlsk8fgjk",
     "mainnet"),
    ("Cardano", "stake1u93wsc8ewn472qw50n06q5vyl843jr3u7lcq7rjc6haacmsfwqcqn", "Shelley address"),
    ("Cardano", "Ae2tdPwUPEZ1RPUDa1v5RpwafGhMWppE19i3Y5sAgKknTHKw6UrvRNcdL6D", "CBOR checksum"),  # bad CRC
    ("Cardano", USDC_SOLANA_MINT, "CBOR checksum"),
    # account-id chains
    ("Near", "Alice.near", "NEAR account id"),
    ("Near", "a", "NEAR account id"),
    ("Near", "alice..near", "NEAR account id"),
    ("Near", "x" * 65, "NEAR account id"),
    ("Aptos", "0x1", "64 hex digits"),
    ("Sui", USDC_ETHEREUM, "64 hex digits"),
    ("Sui", "0x" + "0" * 64, "zero address"),
    ("Sei", "sei1qqqq", "sei1"),
    ("Sei", USDC_SOLANA_MINT, "0x followed by 40 hex digits"),
]


def test_every_chain_of_the_description_has_a_rule():
    assert set(ADDRESS_RULES) == set(blockchain_names())


def test_every_rule_has_a_real_world_example():
    assert set(VALID) | {"0G", "Berachain", "HyperEVM", "Hyperliquid", "Linea", "Monad", "Plasma", "Stable",
                         "Story"} == set(ADDRESS_RULES)
    # The EVM chains without their own example share Ethereum's rule.
    assert all(ADDRESS_RULES[chain] is ADDRESS_RULES["Ethereum"] for chain in set(ADDRESS_RULES) - set(VALID))


def test_only_the_fiat_rail_has_no_defined_format():
    assert [chain for chain, rule in ADDRESS_RULES.items() if not rule.well_defined] == ["EqualsMoney"]


@pytest.mark.parametrize(("chain", "address"), [(c, a) for c, addresses in VALID.items() for a in addresses])
def test_real_addresses_are_accepted(chain, address):
    assert address_problem(chain, address) is None


@pytest.mark.parametrize(("chain", "address", "fragment"), INVALID)
def test_wrong_addresses_are_refused_with_the_reason(chain, address, fragment):
    problem = address_problem(chain, address)
    assert problem is not None and problem.startswith(f"not a valid {chain} address: ")
    assert fragment in problem, problem


def test_a_chain_without_a_rule_is_refused():
    assert address_problem("Mars", USDC_ETHEREUM) == "no address format is known for blockchain Mars"


def test_the_request_model_reports_the_address_against_its_chain():
    base = {"symbol": "USDC", "quantity": "1"}
    assert parse_request({**base, "blockchain": "Ethereum", "address": USDC_ETHEREUM}).address == USDC_ETHEREUM
    with pytest.raises(InvalidRequest) as excinfo:
        parse_request({**base, "blockchain": "Solana", "address": USDC_ETHEREUM})
    assert excinfo.value.errors == {"address": "not a valid Solana address: must be base58 (no 0, O, I or l)"}


def test_an_unknown_blockchain_is_reported_alone():
    # With no chain there is nothing to hold the address to: only the chain is named.
    with pytest.raises(InvalidRequest) as excinfo:
        parse_request({"symbol": "USDC", "quantity": "1", "blockchain": "Mars", "address": "."})
    assert set(excinfo.value.errors) == {"blockchain"}
