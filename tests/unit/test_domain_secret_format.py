"""The client secret format: recognisable, checksummed, carrying its credential id."""

from __future__ import annotations

import os
import re

from hypothesis import given
from hypothesis import strategies as st

from kubeiam.domain import secret_format
from kubeiam.domain.secret_format import credential_id, generate, parse, secret_hash

UIDS = st.uuids().map(str)
SCANNER = re.compile(r"\bkiam_[a-z2-7]{20}_[0-9A-Za-z]{49}\b")


def fixed(value: int):  # a deterministic stand-in for os.urandom, for edge cases
    return lambda n: value.to_bytes(n, "big")


@given(uid=UIDS, random=st.binary(min_size=32, max_size=32))
def test_every_secret_parses_back_to_its_credential_with_a_valid_checksum(
    uid: str, random: bytes
) -> None:
    secret = generate(credential_id(uid), lambda n: random)
    parsed = parse(secret)
    assert parsed is not None
    assert parsed.credential_id == credential_id(uid)
    assert parsed.checksum_ok
    assert SCANNER.fullmatch(secret)


@given(uid=UIDS, position=st.integers(min_value=26, max_value=74), data=st.data())
def test_a_single_changed_character_breaks_the_checksum(
    uid: str, position: int, data: st.DataObject
) -> None:
    secret = generate(credential_id(uid), os.urandom)
    original = secret[position]
    replacement = data.draw(st.sampled_from([c for c in secret_format._BASE62 if c != original]))
    mistyped = secret[:position] + replacement + secret[position + 1 :]
    parsed = parse(mistyped)
    assert parsed is not None
    assert not parsed.checksum_ok


def test_the_random_part_carries_256_bits_even_at_the_extremes() -> None:
    for value in (0, 1, 2**256 - 1):
        secret = generate(credential_id("u"), fixed(value))
        assert len(secret) == len("kiam_") + 20 + 1 + 43 + 6
        assert parse(secret) is not None


def test_two_secrets_for_one_credential_differ() -> None:
    identifier = credential_id("4f9c1e7e-0000-4000-8000-000000000001")
    assert generate(identifier, os.urandom) != generate(identifier, os.urandom)


def test_the_credential_id_is_stable_and_distinct_per_uid() -> None:
    a = credential_id("4f9c1e7e-0000-4000-8000-000000000001")
    assert a == credential_id("4f9c1e7e-0000-4000-8000-000000000001")
    assert a != credential_id("4f9c1e7e-0000-4000-8000-000000000002")
    assert re.fullmatch(r"[a-z2-7]{20}", a)


def test_what_is_not_ours_does_not_parse() -> None:
    assert parse("ghp_0123456789abcdefghijABCDEFGHIJ012345") is None
    assert parse("kiam_short") is None


def test_the_hash_is_sha256_and_never_contains_the_secret() -> None:
    secret = generate(credential_id("u"), os.urandom)
    digest = secret_hash(secret)
    assert re.fullmatch(r"sha256:[0-9a-f]{64}", digest)
    assert secret not in digest
    assert digest == secret_hash(secret)
