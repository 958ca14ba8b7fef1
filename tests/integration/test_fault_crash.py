"""Crash anywhere: the operator is killed (SIGKILL) at a random instant of a burst, round after
round, and each new process finishes the work with every guarantee intact.

Three accounts, more credentials than their limit, so every round admits waiting credentials
(revocations free slots) while new ones arrive. The kill instant is drawn from a seeded random
source as "after N events of the burst were observed" (credential changes or Secret creations),
never as a sleep; sometimes the new process is killed too, while it resumes the half-done work.
The seed and every instant are printed, and KUBEIAM_FAULT_SEED replays them; at most one round
may reach its deadline before its drawn instant (a kill of an idle operator proves little).
After each restart: every credential has its right state, each Active one exactly one Secret
whose client secret hashes to status.secretHash, created once and never changed, none Active
without one, each ledger names exactly the Active set, and the limit held at every instant the
watch saw.
"""

from __future__ import annotations

import os
import random
import secrets
import time
from collections.abc import Callable

from .credentials_support import StateRecorder, account_manifest, credential_manifest, many
from .fault_support import LIMIT, Burst, World, check_secrets, keep_for_leak_scan, settle
from .metrics_support import SecretEvents
from .support import ClusterHandle, OperatorProcess, wait_for

ACCOUNTS = ("alpha", "beta", "gamma")
ROUNDS = 5
FIRST_BURST = LIMIT + 2  # per account: the limit, and two that wait
NEW_PER_ROUND = 2  # per account, in every later round
# Operators here do not serve the webhook (the session's admission-only process does), so a
# kill never fails one of the burst's writes at admission: the suite is about issuance.
NO_WEBHOOK = {"KUBEIAM_WEBHOOK_PORT": "0"}


def _seed() -> int:
    given = os.environ.get("KUBEIAM_FAULT_SEED")
    return int(given) if given else secrets.randbits(32)


def _kill_when(
    victim: OperatorProcess,
    what: str,
    count: Callable[[], int],
    wanted: int,
    *,
    deadline: float,
    base: int | None = None,
) -> tuple[bool, str]:
    """Kill `victim` once `count` has grown by `wanted` from `base` (or once `deadline` seconds
    passed, if the operator did less than drawn); say whether the drawn instant was reached,
    and which instant it was."""
    base = count() if base is None else base
    until = time.monotonic() + deadline

    def instant() -> str | None:
        if count() - base >= wanted:
            return "reached"
        return "deadline" if time.monotonic() > until else None

    how = wait_for(instant, timeout=deadline + 10, interval=0.01, what=f"{wanted} {what}")
    victim.kill()
    return how == "reached", f"after {wanted} {what} ({how}, {count() - base} seen at the kill)"


def test_sigkill_at_random_instants_of_bursts_keeps_every_guarantee(
    cluster: ClusterHandle,
    namespace: str,
    operators: Callable[..., OperatorProcess],
) -> None:
    seed = _seed()
    rng = random.Random(seed)  # noqa: S311  (kill instants, not secrets)
    kills: list[str] = []
    missed = 0  # rounds whose kill came at the deadline, before the drawn instant
    print(f"KUBEIAM_FAULT_SEED={seed}")
    recorder = StateRecorder(cluster, namespace).start()
    secret_events = SecretEvents(cluster, namespace).start()
    hashes: dict[str, str] = {}
    revoked: set[str] = set()
    operator = operators("round-0", **NO_WEBHOOK)

    def secrets_created() -> int:
        return sum(secret_events.count("ADDED").values())

    def credential_events() -> int:
        return recorder.events

    try:
        cluster.apply(many([account_manifest(a) for a in ACCOUNTS]), namespace)
        for account in ACCOUNTS:
            cluster.wait_condition("iamsa", account, namespace)
        world = World.read(cluster, namespace)
        for round_ in range(ROUNDS):
            # The round's writes: revoke some Active credentials (their slots go to waiting
            # ones) and add new ones, in one apply that runs while the kill is chosen.
            manifests, issuances = [], 0
            for account in ACCOUNTS:
                new = FIRST_BURST if round_ == 0 else NEW_PER_ROUND
                ending = sorted(world.active(account))[: rng.randint(1, 2)] if round_ else []
                for name in ending:
                    manifests.append(credential_manifest(name, account, revoked=True))
                    revoked.add(name)
                manifests += [
                    credential_manifest(f"{account}-{round_}-{i}", account) for i in range(new)
                ]
                live = len(set(world.of(account)) - revoked) + new
                issuances += min(LIMIT, live) - (len(world.active(account)) - len(ending))
            # Each user write and each issuance step is one credential event at least.
            what, count, wanted = (
                ("Secrets created", secrets_created, rng.randrange(issuances))
                if issuances and rng.random() < 0.5
                else (
                    "credential events",
                    credential_events,
                    rng.randrange(len(manifests) + 2 * issuances + 1),
                )
            )
            # Counted from before the burst starts, so a kill may come before it is seen.
            base = count()
            burst = Burst(cluster, namespace, manifests)
            reached, kill = _kill_when(operator, what, count, wanted, deadline=30, base=base)
            if not reached:
                missed += 1
            kills.append(f"round {round_}: {kill}")
            killed_at = time.monotonic()
            operator = operators(f"round-{round_ + 1}", **NO_WEBHOOK)
            if rng.random() < 0.4:
                # Sometimes the new process dies too, while it resumes the half-done work.
                _, again = _kill_when(
                    operator, "credential events", credential_events, rng.randrange(4), deadline=10
                )
                kills.append(f"round {round_}, resuming: {again}")
                operator = operators(f"round-{round_ + 1}-again", **NO_WEBHOOK)
            burst.finish()
            world = settle(
                cluster,
                namespace,
                recorder,
                secret_events,
                operator,
                timeout=90,
                what=f"round {round_} to settle",
            )
            kills[-1] += f"; a new process settled it {time.monotonic() - killed_at:.1f}s after"
            check_secrets(cluster, namespace, world, hashes)
            # Never two Secrets for one credential: each name created once and never changed;
            # only an ended credential's Secret was deleted.
            added = secret_events.count("ADDED")
            assert all(n == 1 for n in added.values()), f"a Secret was created twice: {added}"
            assert secret_events.count("MODIFIED") == {}
            assert set(secret_events.count("DELETED")) <= revoked
            assert all(n <= LIMIT for n in recorder.max_active.values()), recorder.max_active
            assert operator.running, operator.log_tail()
        # Resuming kills are not counted: a new process may rightly find nothing left to do.
        assert missed <= 1, (
            f"{missed} of {ROUNDS} kills came at the deadline, not the drawn instant"
        )
    except Exception as error:
        # Whatever failed (a check, a timeout, a kubectl), the kills it came after replay it.
        replay = f"KUBEIAM_FAULT_SEED={seed} replays the kills:\n" + "\n".join(kills)
        print(replay)
        error.add_note(replay)
        raise
    finally:
        recorder.stop()
        secret_events.stop()
    print("\n".join(kills))
    keep_for_leak_scan(cluster, namespace)
    assert recorder.max_active == dict.fromkeys(ACCOUNTS, LIMIT)
    # Every round issued: the suite exercised admission of waiting credentials across kills.
    assert len(hashes) == len(ACCOUNTS) * LIMIT + len(revoked)
