#!/usr/bin/env python3
"""Glob cost per match: streams.matching against google-re2 (and the backtracking regex it replaced).

The edge runs a filter group's globs once per record, so ns per match on typical patterns is what counts;
the pathological rows show that neither blows up where the old regex did.

Run: .venv/bin/python bench/matcher_bench.py [--n 200000]   (re2: .venv/bin/pip install google-re2)
"""

from __future__ import annotations

import argparse
import re
import time
from collections.abc import Callable

from streams.matching import Glob, compile_globs

try:
    import re2
except ImportError:  # re2 is not a dependency: the bench says so and measures the rest
    re2 = None

TYPES = ["workflow.step.finished", "workflow.started", "order.created", "order.paid", "ci.build.failed",
         "deploy.prod.succeeded", "repo-7", "repo-77"]
SOURCES = ["/ci/runner-7", "/cd/prod", "/shop/app", "/ci/x"]
TYPICAL: list[tuple[str, list[str], list[str]]] = [
    ("exact", ["order.created"], TYPES),
    ("prefix workflow.*", ["workflow.*"], TYPES),
    ("prefix /ci/*", ["/ci/*"], SOURCES),
    ("suffix *.failed", ["*.failed"], TYPES),
    ("5 patterns", ["order.created", "workflow.*", "*.failed", "ci.*.deploy", "repo-?"], TYPES),
    ("general ci.*.failed", ["ci.*.failed"], TYPES),
    ("general repo-?", ["repo-?"], TYPES),
]
PATHOLOGICAL: list[tuple[str, list[str], list[str]]] = [
    ("*a*a*a*a*a*a*a*a*b, 70 a", ["*a*a*a*a*a*a*a*a*b"], ["a" * 70]),
    ("*a*a*a*a*a*a*a*a*b, 10k a", ["*a*a*a*a*a*a*a*a*b"], ["a" * 10000]),
    ("*a*a*a*a*a*a*a*a*b, 10k a+b", ["*a*a*a*a*a*a*a*a*b"], ["a" * 10000 + "b"]),
    ("*a?a?a?a?c*, 10k a (glob worst)", ["*a?a?a?a?c*"], ["a" * 10000]),
]
OLD_REGEX_TEXTS = [14, 18, 22]  # a's: the old regex grows ~n^8; 70 took over a minute (issue 9)


def old_regex(patterns: list[str]) -> Callable[[str], object]:
    """Return the backtracking regex stream filters used before (one alternation, `.*` per star)."""
    parts = ["".join(".*" if c == "*" else "." if c == "?" else re.escape(c) for c in p) for p in patterns]
    return re.compile("(?:" + "|".join(parts) + r")\Z", re.DOTALL).match


def re2_regex(patterns: list[str]) -> Callable[[str], object]:
    """Return one RE2 full match over the alternation of the globs."""
    parts = ["".join(".*" if c == "*" else "." if c == "?" else re.escape(c) for c in p) for p in patterns]
    return re2.compile("(?s)(?:" + "|".join(parts) + ")").fullmatch


def ns_per_match(tests: list[Callable[[str], object] | None], texts: list[str], n: int) -> list[float | None]:
    """Return mean ns per call of each test over about n calls cycling through texts.

    The tests take turns within each of 7 rounds and each keeps its best round, so a busy machine
    slows all of them alike and the ratios hold."""
    rounds = max(1, n // len(texts))
    best: list[float | None] = [None if t is None else float("inf") for t in tests]
    for _ in range(7):
        for index, test in enumerate(tests):
            if test is None:
                continue
            start = time.perf_counter_ns()
            for _ in range(rounds):
                for text in texts:
                    test(text)
            elapsed = (time.perf_counter_ns() - start) / (rounds * len(texts))
            best[index] = min(best[index] or elapsed, elapsed)
    return best


def check_agree(patterns: list[str], texts: list[str]) -> None:
    """Stop the bench if the implementations disagree on any text (a fast wrong answer is no figure)."""
    ours = compile_globs(patterns)
    other = re2_regex(patterns) if re2 else old_regex(patterns)
    for text in texts:
        if ours(text) != (other(text) is not None):
            raise SystemExit(f"disagreement on {patterns} / {text[:40]!r}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=200_000, help="calls per typical figure (default 200000)")
    args = parser.parse_args()
    if re2 is None:
        print("google-re2 is not installed: re2 columns show '-'.")
    print(f"{'case':34} {'glob ns':>9} {'Glob ns':>9} {'re2 ns':>9} {'re ns':>9} {'re2/glob':>9}")
    print("  glob = compile_globs (shortcuts + Glob), Glob = the algorithm alone, re = the old backtracking regex")
    rows = [(name, pats, texts, args.n) for name, pats, texts in TYPICAL]
    rows += [(name, pats, texts, 50 if len(texts[0]) > 100 else 2000) for name, pats, texts in PATHOLOGICAL]
    for index, (name, patterns, texts, n) in enumerate(rows):
        if index == len(TYPICAL):
            print("pathological (re: see below)")
        check_agree(patterns, texts)
        ours, alone, other, old = ns_per_match([
            compile_globs(patterns), _glob_only(patterns), re2_regex(patterns) if re2 else None,
            old_regex(patterns) if index < len(TYPICAL) else None], texts, n)
        ratio = f"{other / ours:9.1f}" if other and ours else f"{'-':>9}"
        print(f"{name:34} {_fmt(ours)} {_fmt(alone)} {_fmt(other)} {_fmt(old)} {ratio}")
    print("old backtracking regex on *a*a*a*a*a*a*a*a*b (one match):")
    for count in OLD_REGEX_TEXTS:
        test = old_regex(["*a*a*a*a*a*a*a*a*b"])
        start = time.perf_counter_ns()
        test("a" * count)
        [glob] = ns_per_match([compile_globs(["*a*a*a*a*a*a*a*a*b"])], ["a" * count], 2000)
        print(f"  {count:3} a: {(time.perf_counter_ns() - start) / 1e6:10.1f} ms   glob: {glob:.0f} ns")


def _glob_only(patterns: list[str]) -> Callable[[str], bool]:
    """Return the Glob algorithm over the patterns without the per-shape shortcuts."""
    globs = [Glob(p).match for p in patterns]
    if len(globs) == 1:
        return globs[0]

    def any_of(text: str) -> bool:
        for match in globs:
            if match(text):
                return True
        return False

    return any_of


def _fmt(value: float | None) -> str:
    return f"{value:9.0f}" if value is not None else f"{'-':>9}"


if __name__ == "__main__":
    main()
