"""How fast a background audit checks its targets: in a hurry right after a start, a deletion
or a finding; within a budget of API requests a minute the rest of the time.

A check is one API request. At rest the audit spends at most `rest_rate` of them a minute however
many targets there are, and a full pass takes at least `rest_pass`: so a deleted Secret is found
within `Pace.pass_seconds(targets, hurried=False)` (the documented bound). In a hurry it goes at
`hurried_rate` a second for one full pass, so what a restart or a deletion may have hidden is
found within `Pace.pass_seconds(targets, hurried=True)`.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Pace:
    """The audit's two speeds: checks a second and shortest pass in a hurry; checks a minute
    and shortest pass at rest."""

    hurried_rate: float  # checks a second
    hurried_pass: float  # seconds
    rest_rate: float  # checks a minute
    rest_pass: float  # seconds

    def __post_init__(self) -> None:
        for name in ("hurried_rate", "hurried_pass", "rest_rate", "rest_pass"):
            if not getattr(self, name) > 0:
                raise ValueError(f"the audit's {name} must be positive")

    def pass_seconds(self, targets: int, *, hurried: bool) -> float:
        """How long one full pass over `targets` takes: the longest a target waits for its next
        check (a deleted Secret is reported within this, plus the check itself)."""
        if hurried:
            return max(self.hurried_pass, targets / self.hurried_rate)
        return max(self.rest_pass, targets * 60 / self.rest_rate)


@dataclass(frozen=True)
class Step:
    """What the audit does next: wait `gap` seconds after its last check, then check one target."""

    hurried: bool
    gap: float
    bound: float  # seconds: one full pass at this pace


def next_step(pace: Pace, *, targets: int, since_start: float, since_change: float | None) -> Step:
    """The next check, from the number of targets, the seconds since the audit started and since
    the last change that may hide a finding (a deletion event, a finding; None: none yet).

    In a hurry for one full hurried pass after the start or a change (so every target is checked
    once at the hurried rate), at rest otherwise. Checks are spread evenly over the pass, so the
    API server never sees a burst, and a pass is never shorter than its pace's shortest pass.
    With no target the audit only looks again a hurried pass later (that costs no request).
    """
    window = pace.pass_seconds(targets, hurried=True)
    hurried = since_start < window or (since_change is not None and since_change < window)
    bound = pace.pass_seconds(targets, hurried=hurried)
    gap = bound / targets if targets else pace.hurried_pass
    return Step(hurried=hurried, gap=gap, bound=bound)
