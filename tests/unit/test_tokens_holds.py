"""Holds: a key is taken once until its hold ends, and an ended hold is forgotten."""

from kubeiam.tokens.holds import LocalHolds


def test_a_key_is_taken_once_until_its_hold_ends() -> None:
    holds = LocalHolds()
    assert holds.take(b"jti-1", until=10.0, now=0.0)
    assert not holds.take(b"jti-1", until=20.0, now=9.9)
    assert holds.take(b"jti-2", until=10.0, now=5.0)
    assert holds.take(b"jti-1", until=30.0, now=10.0)  # the first hold ended
    assert not holds.take(b"jti-1", until=40.0, now=29.0)


def test_ended_holds_are_forgotten() -> None:
    holds = LocalHolds()
    for n in range(100):
        holds.take(n.to_bytes(4, "big"), until=1.0, now=0.0)
    assert len(holds) == 100
    holds.take(b"late", until=5.0, now=2.0)
    assert len(holds) == 1


def test_past_capacity_the_soonest_ending_hold_gives_way() -> None:
    holds = LocalHolds(capacity=2)
    assert holds.take(b"a", until=5.0, now=0.0)
    assert holds.take(b"b", until=9.0, now=0.0)
    assert holds.take(b"c", until=9.0, now=0.0)
    assert len(holds) == 2
    assert holds.take(b"a", until=9.0, now=1.0)  # "a" gave way
    assert len(holds) == 2
