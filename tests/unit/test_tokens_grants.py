"""The client_credentials decision: each refusal in its order, and what a grant holds."""

from __future__ import annotations

import dataclasses
import datetime
import ipaddress
import os

import pytest
from hypothesis import given
from hypothesis import strategies as st

from kubeiam.domain.secret_format import checksum, credential_id, generate, secret_hash
from kubeiam.tokens.grants import (
    Account,
    Credential,
    Error,
    Grant,
    Refusal,
    TokenRequest,
    client_address,
    decide,
)

NOW = datetime.datetime(2026, 12, 7, 12, 0, tzinfo=datetime.UTC)
ISSUER = "https://iam.example.test"
CLIENT_ID = "pipeline@team-a.acme.iam"
ID = credential_id("uid-1")
SECRET = generate(ID, os.urandom)
OTHER_ID = credential_id("uid-2")
OTHER_SECRET = generate(OTHER_ID, os.urandom)
ROLES = ("compute.deployer", "storage.reader")


def credential(**changes: object) -> Credential:
    base = Credential(
        namespace="team-a",
        name="key",
        account="pipeline",
        credential_id=ID,
        client_id=CLIENT_ID,
        secret_hash=secret_hash(SECRET),
        state="Active",
        expires_at=NOW + datetime.timedelta(days=30),
        effective_roles=ROLES,
    )
    return dataclasses.replace(base, **changes)  # type: ignore[arg-type]


def account(**changes: object) -> Account:
    base = Account(namespace="team-a", name="pipeline", client_id=CLIENT_ID, disabled=False)
    return dataclasses.replace(base, **changes)  # type: ignore[arg-type]


def run(
    request: TokenRequest,
    *,
    creds: tuple[Credential, ...] = (),
    acct: Account | None = None,
    audiences: tuple[str, ...] = (ISSUER,),
    now: datetime.datetime = NOW,
) -> Grant | Refusal:
    by_id = {c.credential_id: c for c in (creds or (credential(),))}
    accounts = {(a.namespace, a.name): a for a in ([acct] if acct else [account()])}
    return decide(
        request,
        credential_by_id=by_id.get,
        account_of=lambda ns, name: accounts.get((ns, name)),
        allowed_audiences=audiences,
        now=now,
    )


def refused(result: Grant | Refusal, error: Error) -> Refusal:
    assert isinstance(result, Refusal), result
    assert result.error == error, result
    return result


def test_the_right_secret_gets_every_effective_role_for_the_issuer() -> None:
    grant = run(TokenRequest(CLIENT_ID, SECRET))
    assert isinstance(grant, Grant)
    assert grant.scopes == ROLES
    assert grant.audience == ISSUER
    assert grant.not_after == NOW + datetime.timedelta(days=30)
    assert grant.account.client_id == CLIENT_ID


def test_a_subset_of_the_roles_may_be_asked_for() -> None:
    grant = run(TokenRequest(CLIENT_ID, SECRET, scope="storage.reader storage.reader"))
    assert isinstance(grant, Grant)
    assert grant.scopes == ("storage.reader",)


def test_a_scope_beyond_the_effective_roles_is_invalid_scope() -> None:
    refused(run(TokenRequest(CLIENT_ID, SECRET, scope="cluster.admin")), Error.INVALID_SCOPE)


def test_an_audience_off_the_allowlist_is_invalid_target() -> None:
    result = run(TokenRequest(CLIENT_ID, SECRET, audience="https://elsewhere.example"))
    refused(result, Error.INVALID_TARGET)


def test_an_allowed_audience_is_granted_and_the_first_is_the_default() -> None:
    audiences = ("https://api.example", "https://other.example")
    asked = run(
        TokenRequest(CLIENT_ID, SECRET, audience="https://other.example"), audiences=audiences
    )
    default = run(TokenRequest(CLIENT_ID, SECRET), audiences=audiences)
    assert isinstance(asked, Grant)
    assert asked.audience == "https://other.example"
    assert isinstance(default, Grant)
    assert default.audience == "https://api.example"


def test_a_wrong_secret_for_the_same_credential_id_is_invalid_client() -> None:
    # A forger can compute the CRC: the checksum passes, the hash does not.
    body = f"kiam_{ID}_{OTHER_SECRET[26:-6]}"
    forged = body + checksum(body)
    refused(run(TokenRequest(CLIENT_ID, forged)), Error.INVALID_CLIENT)


def test_a_secret_with_a_broken_checksum_is_refused_before_any_lookup() -> None:
    broken = SECRET[:-1] + ("A" if SECRET[-1] != "A" else "B")

    def never(_: str) -> Credential | None:
        raise AssertionError("looked up a secret whose checksum fails")

    result = decide(
        TokenRequest(CLIENT_ID, broken),
        credential_by_id=never,
        account_of=lambda ns, name: None,
        allowed_audiences=(ISSUER,),
        now=NOW,
    )
    refused(result, Error.INVALID_CLIENT)


def test_another_credentials_secret_with_this_client_id_is_invalid_client() -> None:
    other = credential(
        credential_id=OTHER_ID,
        client_id="other@team-b.acme.iam",
        secret_hash=secret_hash(OTHER_SECRET),
        namespace="team-b",
    )
    result = run(TokenRequest(CLIENT_ID, OTHER_SECRET), creds=(credential(), other))
    refused(result, Error.INVALID_CLIENT)


def test_an_unknown_credential_id_is_invalid_client() -> None:
    refused(run(TokenRequest(CLIENT_ID, OTHER_SECRET)), Error.INVALID_CLIENT)


@pytest.mark.parametrize("state", ["Revoked", "Expired", "Pending", "Failed", ""])
def test_a_credential_not_active_is_invalid_client(state: str) -> None:
    refused(
        run(TokenRequest(CLIENT_ID, SECRET), creds=(credential(state=state),)), Error.INVALID_CLIENT
    )


def test_a_credential_past_its_expiry_by_the_clock_is_refused_while_status_says_active() -> None:
    result = run(TokenRequest(CLIENT_ID, SECRET), now=NOW + datetime.timedelta(days=30))
    assert refused(result, Error.INVALID_CLIENT).description == "The credential has expired."


def test_a_disabled_account_is_unauthorized_client() -> None:
    result = run(TokenRequest(CLIENT_ID, SECRET), acct=account(disabled=True))
    refused(result, Error.UNAUTHORIZED_CLIENT)


def test_a_missing_account_is_invalid_client() -> None:
    result = run(TokenRequest(CLIENT_ID, SECRET), acct=account(name="someone-else"))
    refused(result, Error.INVALID_CLIENT)


def test_state_is_told_only_to_the_holder_of_the_secret() -> None:
    """A revoked credential and a wrong secret look alike to whoever lacks the secret."""
    revoked = (credential(state="Revoked"),)
    wrong = run(TokenRequest(CLIENT_ID, OTHER_SECRET), creds=revoked)
    assert wrong == run(TokenRequest(CLIENT_ID, "kiam_nonsense"), creds=revoked)


# Every description the decision can give: fixed sentences, so none can quote the request.
DESCRIPTIONS = {
    "Client authentication failed.",
    "The credential is not active.",
    "The credential has expired.",
    "The credential's account does not exist.",
    "The account is disabled.",
    "The scope asked for exceeds the credential's roles.",
    "The audience asked for is not allowed.",
}


@given(text=st.text(max_size=200))
def test_no_description_quotes_the_request(text: str) -> None:
    for request in (
        TokenRequest(text, text, scope=text, audience=text),
        TokenRequest(CLIENT_ID, SECRET, scope=text + " x", audience=None),
        TokenRequest(CLIENT_ID, SECRET, audience=text + "/"),
    ):
        result = run(request)
        if isinstance(result, Refusal):
            assert result.description in DESCRIPTIONS


def test_a_request_never_shows_its_secret() -> None:
    assert SECRET not in repr(TokenRequest(CLIENT_ID, SECRET))


@given(
    random=st.text(
        alphabet="0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz",
        min_size=43,
        max_size=43,
    ),
    client_id=st.sampled_from([CLIENT_ID, "other@team-b.acme.iam", ""]),
)
def test_only_the_exact_secret_is_ever_granted(random: str, client_id: str) -> None:
    """Any well-formed secret naming this credential, its checksum right, is refused unless it
    is the secret itself (a forger can compute the CRC, never the hash)."""
    body = f"kiam_{ID}_{random}"
    candidate = body + checksum(body)
    result = run(TokenRequest(client_id, candidate))
    if candidate == SECRET and client_id == CLIENT_ID:
        assert isinstance(result, Grant)
    else:
        refused(result, Error.INVALID_CLIENT)


# -- allowSourceCidrs and X-Forwarded-For ------------------------------------------------------


def _nets(*cidrs: str) -> tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...]:
    return tuple(ipaddress.ip_network(cidr) for cidr in cidrs)


def _from(address: str | None, cidrs: tuple[str, ...] | None) -> Grant | Refusal:
    listed = None if cidrs is None else _nets(*cidrs)
    at = None if address is None else ipaddress.ip_address(address)
    return run(
        TokenRequest(CLIENT_ID, SECRET, client_address=at),
        creds=(credential(allow_source_cidrs=listed),),
    )


@pytest.mark.parametrize(
    ("address", "cidrs"),
    [
        ("10.1.2.3", None),
        (None, None),
        ("10.1.2.3", ("10.0.0.0/8",)),
        ("192.0.2.7", ("10.0.0.0/8", "192.0.2.0/24")),
        ("2001:db8::5", ("2001:db8::/32",)),
        ("::ffff:10.1.2.3", ("10.0.0.0/8",)),  # a dual-stack socket's view of an IPv4 client
        ("::1", ("::1/128",)),
    ],
)
def test_an_address_inside_the_allowlist_or_no_allowlist_is_granted(
    address: str | None, cidrs: tuple[str, ...] | None
) -> None:
    assert isinstance(_from(address, cidrs), Grant)


@pytest.mark.parametrize(
    ("address", "cidrs"),
    [
        ("11.1.2.3", ("10.0.0.0/8",)),
        ("2001:db9::5", ("2001:db8::/32",)),
        ("10.1.2.3", ("::/0",)),  # an IPv4 client is not inside an IPv6 block
        ("::1", ("0.0.0.0/0",)),
        (None, ("0.0.0.0/0", "::/0")),  # an unknown address is inside nothing
        ("10.1.2.3", ()),  # an empty list admits nobody
    ],
)
def test_an_address_outside_the_allowlist_is_invalid_client(
    address: str | None, cidrs: tuple[str, ...]
) -> None:
    refused(_from(address, cidrs), Error.INVALID_CLIENT)


def test_the_address_is_checked_only_after_the_secret_was_proven() -> None:
    wrong = TokenRequest(CLIENT_ID, OTHER_SECRET, client_address=ipaddress.ip_address("11.0.0.1"))
    result = refused(
        run(wrong, creds=(credential(allow_source_cidrs=_nets("10.0.0.0/8")),)),
        Error.INVALID_CLIENT,
    )
    assert "address" not in result.description


PROXIES = _nets("10.0.0.0/8", "fd00::/8")


@pytest.mark.parametrize(
    ("peer", "forwarded", "client"),
    [
        ("203.0.113.9", [], "203.0.113.9"),
        # A forged header from a peer that is no proxy: the peer it is.
        ("203.0.113.9", ["10.1.1.1"], "203.0.113.9"),
        ("2001:db8::9", ["fd00::1"], "2001:db8::9"),
        # From a proxy: the rightmost hop that is no proxy; what lies left of it is the client's.
        ("10.0.0.2", ["198.51.100.4"], "198.51.100.4"),
        ("10.0.0.2", ["10.9.9.9, 198.51.100.4, 10.0.0.3"], "198.51.100.4"),
        ("10.0.0.2", ["10.9.9.9", "198.51.100.4", "10.0.0.3"], "198.51.100.4"),
        ("fd00::2", ["2001:db8::4, fd00::3"], "2001:db8::4"),
        ("::ffff:10.0.0.2", ["198.51.100.4"], "198.51.100.4"),
        # Every hop a proxy: the leftmost.
        ("10.0.0.2", ["10.0.0.7, 10.0.0.8"], "10.0.0.7"),
        # A proxy without the header: the proxy.
        ("10.0.0.2", [], "10.0.0.2"),
    ],
)
def test_the_client_address_is_the_rightmost_untrusted_hop(
    peer: str, forwarded: list[str], client: str
) -> None:
    assert client_address(peer, forwarded, PROXIES) == ipaddress.ip_address(client)


@pytest.mark.parametrize(
    ("peer", "forwarded"),
    [
        (None, []),
        ("not-an-address", []),
        ("10.0.0.2", ["198.51.100.4, unknown"]),  # the hop to read is malformed
        ("10.0.0.2", [""]),
    ],
)
def test_an_address_that_cannot_be_read_is_unknown(peer: str | None, forwarded: list[str]) -> None:
    assert client_address(peer, forwarded, PROXIES) is None


def test_without_trusted_proxies_the_header_is_ignored() -> None:
    assert client_address("10.0.0.2", ["198.51.100.4"], ()) == ipaddress.ip_address("10.0.0.2")
