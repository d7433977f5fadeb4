"""Our robots.txt verdicts against Google's reference parser over many generated files.

    .venv/bin/python bench/robots_diff.py [--cases 100000] [--seed 1]

Uses the generator and the deliberate-choice classes of tests/robots_oracle.py
(the CI test runs a bounded sample of the same). Prints how many cases agree,
how many differ for each deliberate reason, and every unexplained one (target: 0).
"""

from __future__ import annotations

import argparse
import collections
import random
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tests.robots_oracle import compare, generate


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--cases", type=int, default=100_000)
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args()
    rng = random.Random(args.seed)
    counts: collections.Counter[str] = collections.Counter()
    unexplained = []
    started = time.monotonic()
    for i in range(args.cases):
        body, path = generate(rng)
        outcome = compare(body, path)
        counts[outcome.why or "agree"] += 1
        if outcome.why == "UNEXPLAINED":
            unexplained.append((body, path, outcome))
        if (i + 1) % 20_000 == 0:
            print(f"  {i + 1:,} cases, {time.monotonic() - started:.0f} s", file=sys.stderr, flush=True)
    print(f"{args.cases:,} generated cases (seed {args.seed}):")
    for why, n in counts.most_common():
        print(f"  {why:<24} {n:>8,}")
    for body, path, outcome in unexplained[:20]:
        print(
            f"UNEXPLAINED: {path!r} ours={outcome.ours} google={outcome.google}\n{body.decode(errors='replace')}"
        )
    print(f"unexplained disagreements: {len(unexplained)} (target 0)")
    return 1 if unexplained else 0


if __name__ == "__main__":
    sys.exit(main())
