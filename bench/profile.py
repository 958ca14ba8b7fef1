"""Summarise a py-spy raw profile (`make bench BENCH_PROFILE=1`): the frames samples end in
(self time) and the frames samples pass through (inclusive), as shares of all samples.

    python -m bench.profile .local/bench/<run>/profile-burst.txt [--top 25] [--match kubeiam]
"""

from __future__ import annotations

import argparse
import sys
from collections import Counter
from pathlib import Path


def load(path: Path) -> Counter[tuple[str, ...]]:
    """Folded stacks: `frame;frame;...;frame count`, outermost first."""
    stacks: Counter[tuple[str, ...]] = Counter()
    for line in path.read_text(errors="replace").splitlines():
        stack, _, count = line.rpartition(" ")
        if stack and count.isdigit():
            stacks[tuple(stack.split(";"))] += int(count)
    return stacks


def summarise(
    stacks: Counter[tuple[str, ...]], *, top: int, match: str = "", thread: str = ""
) -> tuple[int, list[tuple[str, int]], list[tuple[str, int]]]:
    if thread:
        stacks = Counter({s: c for s, c in stacks.items() if any(thread in f for f in s)})
    total = sum(stacks.values())
    own: Counter[str] = Counter()
    through: Counter[str] = Counter()
    for stack, count in stacks.items():
        # Idle threads wait in the selector or on a lock: not work, but shown as such.
        if stack:
            own[stack[-1]] += count
        for frame in set(stack):
            if match in frame:
                through[frame] += count
    return total, own.most_common(top), through.most_common(top)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.profile")
    parser.add_argument("profile", type=Path)
    parser.add_argument("--top", type=int, default=25)
    parser.add_argument("--match", default="", help="inclusive frames containing this only")
    parser.add_argument(
        "--thread",
        default="",
        help="only stacks through a frame containing this, e.g. kubeiam/cli.py: the event loop",
    )
    args = parser.parse_args(argv)
    total, own, through = summarise(
        load(args.profile), top=args.top, match=args.match, thread=args.thread
    )
    if not total:
        print("no samples", file=sys.stderr)
        return 1
    print(f"{total} samples")
    print("\nSelf (where samples end):")
    for frame, count in own:
        print(f"  {100 * count / total:5.1f}%  {frame}")
    print(f"\nInclusive{f' (frames containing {args.match!r})' if args.match else ''}:")
    for frame, count in through:
        print(f"  {100 * count / total:5.1f}%  {frame}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
