"""etl.api.tokens: the token's form, its hash, and the constant-time comparison."""
from __future__ import annotations

import hashlib
import re

from hypothesis import given
from hypothesis import strategies as st

from etl.api import tokens


def test_a_new_token_has_a_public_id_and_a_256_bit_secret_of_which_only_the_hash_is_kept():
    text, token_id, secret_hash = tokens.new_token()
    assert re.fullmatch(r"tillflow_[0-9a-f]{12}_[A-Za-z0-9_-]{43}", text)
    assert text.split("_")[1] == token_id
    secret = text[len("tillflow_") + 13:]
    assert secret_hash == hashlib.sha256(secret.encode()).digest() and len(secret_hash) == 32
    assert secret not in secret_hash.hex()


def test_tokens_are_unique():
    made = {tokens.new_token()[0] for _ in range(500)}
    assert len(made) == 500
    assert len({t.split("_")[1] for t in made}) == 500


def test_parse_splits_a_well_formed_token_only():
    text, token_id, _ = tokens.new_token()
    assert tokens.parse(text) == (token_id, text[len("tillflow_") + 13:])
    for bad in ("", "tillflow_", text[:-1], text + "x", text.upper(), "Bearer " + text, text.replace("_", "-", 1),
                f"tillflow_{token_id}_" + "a" * 42 + "!", " " + text):
        assert tokens.parse(bad) is None, bad


@given(st.text(max_size=80))
def test_parse_never_raises(text):
    result = tokens.parse(text)
    assert result is None or tokens.PREFIX + result[0] + "_" + result[1] == text


def test_matches_compares_the_digest_of_the_secret():
    text, _, secret_hash = tokens.new_token()
    _, secret = tokens.parse(text)
    assert tokens.matches(secret, secret_hash)
    assert not tokens.matches(secret[:-1] + ("A" if secret[-1] != "A" else "B"), secret_hash)
    assert not tokens.matches(secret, b"\0" * 32)
