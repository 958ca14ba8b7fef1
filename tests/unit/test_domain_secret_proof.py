"""Whether a Secret is the one kube-iam wrote: the MAC, the 409 verdict, the audit's verdict."""

from __future__ import annotations

import datetime
from typing import Any

from hypothesis import given
from hypothesis import strategies as st

from kubeiam.domain.secret_proof import (
    LEFTOVER_GRACE,
    Expected,
    Foreign,
    Leftover,
    Ours,
    SigningKey,
    judge_existing,
    judge_issued,
    leftover_given_up,
    sign,
    verify,
)

KEY = SigningKey("k1", b"\x01" * 32)
KEYS = {KEY.key_id: KEY.key}
HASH = "sha256:" + "ab" * 32
EXPECTED = Expected(
    credential="ci",
    credential_uid="cred-uid",
    secret_name="ci",
    secret_type="iam.kubeiam.io/client-credentials",
    managed_by={"app.kubernetes.io/managed-by": "kube-iam"},
    hash_annotation="iam.kubeiam.io/secret-hash",
    proof_annotation="iam.kubeiam.io/secret-proof",
)


def proof(uid: str = "cred-uid", name: str = "ci", digest: str = HASH) -> str:
    return sign(KEY, credential_uid=uid, secret_name=name, secret_hash=digest)


def secret(**overrides: Any) -> dict[str, Any]:
    """What kube-iam's own create wrote, as a full read returns it without data."""
    metadata: dict[str, Any] = {
        "uid": "secret-uid",
        "labels": {"app.kubernetes.io/managed-by": "kube-iam"},
        "annotations": {"iam.kubeiam.io/secret-hash": HASH, "iam.kubeiam.io/secret-proof": proof()},
        "ownerReferences": [{"kind": "ServiceAccountCredential", "name": "ci", "uid": "cred-uid"}],
    }
    metadata.update(overrides.pop("metadata", {}))
    return {
        "metadata": metadata,
        "immutable": True,
        "type": "iam.kubeiam.io/client-credentials",
        **overrides,
    }


def test_a_proof_verifies_only_for_the_values_and_key_it_was_made_with() -> None:
    good = proof()
    assert verify(KEYS, good, credential_uid="cred-uid", secret_name="ci", secret_hash=HASH)
    assert not verify(KEYS, good, credential_uid="other", secret_name="ci", secret_hash=HASH)
    assert not verify(KEYS, good, credential_uid="cred-uid", secret_name="cj", secret_hash=HASH)
    other_hash = "sha256:" + "cd" * 32
    assert not verify(
        KEYS, good, credential_uid="cred-uid", secret_name="ci", secret_hash=other_hash
    )
    assert not verify(
        {"k1": b"\x02" * 32}, good, credential_uid="cred-uid", secret_name="ci", secret_hash=HASH
    )
    assert good.startswith("v1.k1.")


@given(st.text(max_size=20), st.text(max_size=20), st.text(max_size=20))
def test_the_encoding_is_unambiguous(a: str, b: str, c: str) -> None:
    """Moving characters from one field to the next never yields the same proof."""
    shifted = (a + b[:1], b[1:], c)
    made = sign(KEY, credential_uid=a, secret_name=b, secret_hash=c)
    if shifted != (a, b, c):
        assert not verify(
            KEYS, made, credential_uid=shifted[0], secret_name=shifted[1], secret_hash=shifted[2]
        )


@given(st.one_of(st.none(), st.integers(), st.text(max_size=80)))
def test_any_malformed_proof_is_refused(value: object) -> None:
    assert not verify(KEYS, value, credential_uid="cred-uid", secret_name="ci", secret_hash=HASH)


def test_kube_iams_own_secret_is_adopted_with_its_hash_and_uid() -> None:
    assert judge_existing(secret(), EXPECTED, KEYS) == Ours(HASH, "secret-uid")


def test_an_owner_reference_and_a_hash_without_the_proof_prove_nothing() -> None:
    planted = secret(metadata={"annotations": {"iam.kubeiam.io/secret-hash": HASH}})
    verdict = judge_existing(planted, EXPECTED, KEYS)
    assert isinstance(verdict, Foreign)
    assert "cannot prove" in verdict.why


def test_a_proof_copied_from_another_secret_does_not_verify() -> None:
    copied = {"iam.kubeiam.io/secret-hash": HASH, "iam.kubeiam.io/secret-proof": proof("x")}
    assert isinstance(
        judge_existing(secret(metadata={"annotations": copied}), EXPECTED, KEYS), Foreign
    )


def test_a_proved_secret_that_is_mutable_or_of_another_type_or_label_is_foreign() -> None:
    assert isinstance(judge_existing(secret(immutable=False), EXPECTED, KEYS), Foreign)
    assert isinstance(judge_existing(secret(immutable=None), EXPECTED, KEYS), Foreign)
    assert isinstance(judge_existing(secret(type="Opaque"), EXPECTED, KEYS), Foreign)
    assert isinstance(judge_existing(secret(metadata={"labels": {}}), EXPECTED, KEYS), Foreign)


def test_a_secret_being_deleted_or_owned_by_a_namesake_is_a_leftover() -> None:
    deleting = secret(metadata={"deletionTimestamp": "2026-01-01T00:00:00Z"})
    assert isinstance(judge_existing(deleting, EXPECTED, KEYS), Leftover)
    namesake = [{"kind": "ServiceAccountCredential", "name": "ci", "uid": "earlier"}]
    assert isinstance(
        judge_existing(secret(metadata={"ownerReferences": namesake}), EXPECTED, KEYS), Leftover
    )


def test_a_leftover_is_waited_for_a_bounded_time_after_the_credential_was_created() -> None:
    created = datetime.datetime(2026, 1, 1, tzinfo=datetime.UTC)
    assert not leftover_given_up(created, created + LEFTOVER_GRACE - datetime.timedelta(seconds=1))
    assert leftover_given_up(created, created + LEFTOVER_GRACE)


RECORDED_UID = "secret-uid"


def judge(metadata: dict[str, Any] | None, secret_uid: str | None = RECORDED_UID) -> str:
    return judge_issued(
        metadata,
        credential_uid="cred-uid",
        secret_name="ci",
        secret_uid=secret_uid,
        secret_hash=HASH,
        keys=KEYS,
        hash_annotation=EXPECTED.hash_annotation,
        proof_annotation=EXPECTED.proof_annotation,
    )


def test_the_audit_knows_its_secret_by_the_uid_recorded_at_issuance() -> None:
    assert judge(secret()["metadata"]) == "present"
    assert judge(None) == "absent"
    look_alike = {**secret()["metadata"], "uid": "another"}  # every annotation copied
    assert judge(look_alike) == "replaced"


def test_without_a_recorded_uid_the_proof_decides_and_a_proofless_secret_its_owner() -> None:
    assert judge(secret()["metadata"], secret_uid=None) == "present"
    forged = {**secret()["metadata"], "annotations": {"iam.kubeiam.io/secret-proof": "v1.k1.00"}}
    assert judge(forged, secret_uid=None) == "replaced"
    legacy = {**secret()["metadata"], "annotations": {"iam.kubeiam.io/secret-hash": HASH}}
    assert judge(legacy, secret_uid=None) == "present"
    assert judge({**legacy, "ownerReferences": []}, secret_uid=None) == "replaced"
