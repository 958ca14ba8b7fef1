"""kopf's ToggleSet made O(1) per change, installed before kopf's operator starts.

Why, with the figures: docs/decisions/0001-counting-kopf-toggle-set.md.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import inspect
import logging
from collections.abc import Callable, Iterable

from kopf._cogs.aiokits import aiotoggles
from kopf._core.reactor import orchestration, running

logger = logging.getLogger(__name__)

KOPF_VERSION = "1.45.2"
# sha256 of kopf's aiotoggles.py as this module was written against (kopf 1.45.2).
AIOTOGGLES_SHA256 = "8308730e8c42c15fc975c4900bad8ab12589f654f699feff5a25f3032416e444"
# Where kopf builds its sets: the swap works only if kopf looks the class up in its module.
CALL_SITES = {
    orchestration: "aiotoggles.ToggleSet(all)",
    running: "aiotoggles.ToggleSet(any)",
}

KOPF_TOGGLE_SET = aiotoggles.ToggleSet


class MemberToggle(aiotoggles.Toggle):
    """A toggle made by a CountingToggleSet: its turns keep the set's count true."""

    def __init__(self, state: bool, *, name: str | None, owner: CountingToggleSet) -> None:
        super().__init__(state, name=name, condition=owner._condition)
        self._owner = owner
        self._waiters = 0  # tasks in this toggle's own wait_for

    async def turn_to(self, __state: bool) -> None:
        state = bool(__state)
        async with self._condition:
            if state == self._state:
                return  # kopf would wake everyone to find nothing changed
            was_on = self._owner.is_on()
            if self in self._owner._toggles:
                self._owner._on += 1 if state else -1
            self._state = state
            if self._waiters or self._owner.is_on() != was_on:
                self._condition.notify_all()

    async def wait_for(self, __state: bool) -> None:
        async with self._condition:
            self._waiters += 1
            try:
                await self._condition.wait_for(lambda: self._state == bool(__state))
            finally:
                self._waiters -= 1


class CountingToggleSet(aiotoggles.ToggleSet):
    """kopf's ToggleSet with a count of its toggles that are on, waking waiters only on flips."""

    def __init__(self, fn: Callable[[Iterable[bool]], bool]) -> None:
        super().__init__(fn)
        self._counted = fn is all or fn is any
        self._on = 0

    def is_on(self) -> bool:
        if not self._counted:
            return super().is_on()
        if self._fn is all:
            return self._on == len(self._toggles)
        return self._on > 0

    async def make_toggle(
        self, __val: bool = False, *, name: str | None = None
    ) -> aiotoggles.Toggle:
        if not self._counted:
            return await super().make_toggle(__val, name=name)
        toggle = MemberToggle(bool(__val), name=name, owner=self)
        async with self._condition:
            was_on = self.is_on()
            self._toggles.add(toggle)
            self._on += toggle.is_on()
            self._wake_on_flip(was_on)
        return toggle

    async def drop_toggle(self, toggle: aiotoggles.Toggle) -> None:
        await self.drop_toggles([toggle])

    async def drop_toggles(self, toggles: Iterable[aiotoggles.Toggle]) -> None:
        if not self._counted:
            await super().drop_toggles(toggles)
            return
        async with self._condition:
            was_on = self.is_on()
            for toggle in list(toggles):  # a copy: the caller may pass this very set
                if toggle in self._toggles:
                    self._toggles.discard(toggle)
                    self._on -= toggle.is_on()
            self._wake_on_flip(was_on)

    def _wake_on_flip(self, was_on: bool) -> None:
        if self.is_on() != was_on:
            self._condition.notify_all()


def version_mismatch() -> str:
    """What differs from kopf's pinned version; empty when nothing does."""
    version = importlib.metadata.version("kopf")
    return "" if version == KOPF_VERSION else f"kopf is {version}, not {KOPF_VERSION}"


def mismatches() -> list[str]:
    """What differs from the kopf this module was written against; empty when nothing does."""
    version = version_mismatch()
    found = [version] if version else []
    source = inspect.getsource(aiotoggles).encode()
    if hashlib.sha256(source).hexdigest() != AIOTOGGLES_SHA256:
        found.append("kopf's _cogs/aiokits/aiotoggles.py has changed")
    for module, call in CALL_SITES.items():
        if call not in inspect.getsource(module):
            found.append(f"{module.__name__} no longer builds its set as {call}")
    return found


def install(*, enabled: bool = True) -> None:
    """Make kopf build CountingToggleSets; refuse (RuntimeError) if kopf is not the one expected."""
    if not enabled:
        logger.warning(
            "KUBEIAM_COUNTED_KOPF_TOGGLES is false: kopf's own ToggleSet is used, and a restart "
            "over many objects takes time growing with their number cubed."
        )
        aiotoggles.ToggleSet = KOPF_TOGGLE_SET  # type: ignore[misc]
        return
    found = mismatches()
    if found:
        raise RuntimeError(
            "kube-iam's ToggleSet replacement (kube/kopf_toggles.py) was written for kopf "
            f"{KOPF_VERSION}: {'; '.join(found)}. Check it against this kopf and adapt it, "
            "or turn it off with KUBEIAM_COUNTED_KOPF_TOGGLES=false."
        )
    aiotoggles.ToggleSet = CountingToggleSet  # type: ignore[misc]
