"""Our robots.txt verdicts against Google's reference parser, on generated real-world-shaped files.

A bounded run (fixed seed, a few seconds); bench/robots_diff.py runs 100,000+.
Each disagreement must be one of the deliberate choices in tests/robots_oracle.py.
"""

from __future__ import annotations

import random

from hypothesis import HealthCheck, given, seed, settings
from hypothesis import strategies as st

from tests.robots_oracle import compare, generate, google, ours


@seed(9309)
@settings(max_examples=1500, deadline=None, suppress_health_check=[HealthCheck.too_slow], database=None)
@given(st.randoms(use_true_random=False))
def test_every_disagreement_with_googles_parser_is_a_deliberate_choice(rng: random.Random) -> None:
    body, path = generate(rng)
    outcome = compare(body, path)
    assert outcome.why != "UNEXPLAINED", (body, path, outcome)


def test_the_oracle_can_tell_them_apart() -> None:
    # The comparison is live: a file both read the same way, and one where we are stricter.
    plain = b"User-agent: *\nDisallow: /private\n"
    assert ours(plain, "/private/x") is google(plain, "/private/x") is False
    assert ours(plain, "/public") is google(plain, "/public") is True
    dollar = b"User-agent: *\nDisallow: /a$\n"
    assert compare(dollar, "/a$").why == "dollar-literal"


def test_star_prefixed_tokens_agree_with_google() -> None:
    for value in ("*WordPress*", "*Bot", "ExampleBot2", "* all"):
        body = f"User-agent: {value}\nDisallow: /\n".encode()
        assert ours(body, "/a") is google(body, "/a"), value
