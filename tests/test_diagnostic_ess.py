"""The covariance diagnostic when few samples carry the weight p^(alpha-1): no confident wrong sign, and coverage.

The scenario of the issue: per prompt a wrong mode and ten right answers of lower probability, so that p^4 moves
almost all of its mass onto the wrong mode (the true gain is negative), but with few base samples per prompt the mode
is often not sampled at all and the right answers that were sampled carry all the weight.
"""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest

from trl_power.diagnostic import (
    _extremes,
    covariance_diagnostic,
    ess_threshold,
    hidden_prompts,
    miss_chance,
)

ALPHA, PROMPTS, TAIL = 4.0, 20, 5000


def _issue_table(seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """log p [P, 5011] and rewards of the issue's answers, per prompt: a wrong mode with p ~ U(0.09, 0.11), ten right
    answers with p ~ U(0.022, 0.028) each, and the rest (0.65 on average) spread over 5000 wrong answers with weights
    exp(N(0, 0.5^2)), each below 0.0013. (With the issue's rounded 0.09 and 0.02 exactly, E_p[r] = 0.2 and the gain
    is -0.18; its "about -0.21" needs the slightly larger values here: E_p[r] = 0.252, E_{p^4}[r] = 0.041.)"""
    rng = np.random.default_rng(seed)
    mode = rng.uniform(0.09, 0.11, PROMPTS)
    right = rng.uniform(0.022, 0.028, (PROMPTS, 10))
    tail = np.exp(rng.normal(0.0, 0.5, (PROMPTS, TAIL)))
    tail *= ((1.0 - mode - right.sum(1)) / tail.sum(1))[:, None]
    p = np.concatenate([mode[:, None], right, tail], 1)
    r = np.zeros_like(p)
    r[:, 1:11] = 1.0
    return np.log(p), r


def _true_gain(logp: np.ndarray, r: np.ndarray, alpha: float) -> float:
    """E_{p^alpha}[r] - E_p[r] by enumeration of the table, averaged over the prompts."""
    p = np.exp(logp)
    pa = np.exp(alpha * (logp - logp.max(1, keepdims=True)))
    pa /= pa.sum(1, keepdims=True)
    return float(((pa * r).sum(1) - (p * r).sum(1)).mean())


def _draw(logp: np.ndarray, r: np.ndarray, n: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """n base samples per prompt (inverse-CDF draws from the table): rewards and log p, each [P, n]."""
    cdf = np.cumsum(np.exp(logp), 1)
    idx = np.minimum((cdf[:, None, :] < rng.random((logp.shape[0], n, 1))).sum(-1), logp.shape[1] - 1)
    return np.take_along_axis(r, idx, 1), np.take_along_axis(logp, idx, 1)


@pytest.fixture(scope="module")
def issue_table():
    logp, r = _issue_table()
    truth = _true_gain(logp, r, ALPHA)
    assert truth == pytest.approx(-0.211, abs=0.001)
    assert np.exp(logp[:, 11:]).max() < 0.02 / 10  # the tail answers are far rarer than the right ones
    return logp, r, truth


@pytest.mark.parametrize("n", [8, 16, 64])
def test_few_samples_carrying_the_weight_give_no_confident_wrong_sign(issue_table, n):
    """100 replications of 20 prompts x n base samples, alpha 4, true gain -0.211: "help" (the wrong sign) at most 5
    times in 100 at every n, and still "hurt" at least 90 times with 64 samples (median ESS at alpha 6.8 there).

    Bug caught: the verdict taken from an interval that treats the drawn samples as the population (the diagnostic
    before the hidden-prompt rule) said "help" 78/100 times at n = 8 and 20/100 at n = 16 on these draws (the
    issue: 34/60 and 11/60). Measured with the rule: help 2/100 at n = 8 (8 in 1000 with other draws: 6 or more in
    100 has probability 2e-4 at that rate), 0 at 16; hurt 100/100 at 64. Where a verdict is withheld the message says
    how many samples per prompt would do.
    """
    logp, r, truth = issue_table
    rng = np.random.default_rng(n)
    counts = {"help": 0, "hurt": 0, "unclear": 0}
    for rep in range(100):
        rw, lp = _draw(logp, r, n, rng)
        diag = covariance_diagnostic(rw, lp, ALPHA, num_points=2, bootstrap=100, seed=rep)
        counts[diag.verdict] += 1
        if diag.withheld:
            assert diag.verdict == "unclear" and diag.snis_gain_ci[0] * diag.snis_gain_ci[1] > 0
            assert f"Draw about {diag.samples_needed} base samples per prompt" in diag.message
            assert diag.samples_needed > n and diag.hidden_prompts > 0
    print(f"n={n}: {counts}")
    assert counts["help"] <= 5, counts
    if n == 64:
        assert counts["hurt"] >= 90, counts


def test_interval_covers_at_low_ess(issue_table):
    """Coverage of the 90% interval at low ESS: 200 replications of 20 prompts x 64 samples of the issue's table
    (median ESS at alpha 6.8 of 64; tests/test_evaluation.py checks coverage at ESS ~48). The count of covering
    intervals is asked to reach 0.9 less 3 binomial standard deviations (sd = 0.021): the interval may be
    conservative (it lets the prompts that may hide heavier answers take any reward), not narrow.

    Bug caught: the interval that takes every prompt's SNIS estimate at its word covered 128/200 here (0.64; its
    estimate is biased up by 0.01 where the mode was sampled only a few times, and some prompts missed the mode);
    an interval covering 0.83 would pass with probability 0.40, one covering 0.90 fails with probability 0.003.
    Measured with the rule: 199/200, every verdict "hurt"."""
    logp, r, truth = issue_table
    rng = np.random.default_rng(64)
    reps, covered, medians = 200, 0, []
    for rep in range(reps):
        rw, lp = _draw(logp, r, 64, rng)
        diag = covariance_diagnostic(rw, lp, ALPHA, num_points=2, bootstrap=50, seed=rep)
        covered += diag.gain_ci[0] <= truth <= diag.gain_ci[1]
        medians.append(diag.median_ess_at_alpha)
    print(f"coverage at low ESS: {covered / reps:.3f}, median ESS {np.median(medians):.1f}")
    assert np.median(medians) < 8
    assert covered / reps >= 0.9 - 3 * math.sqrt(0.9 * 0.1 / reps), covered / reps


def test_hidden_prompt_rule_pieces():
    """The pieces of the rule against their definitions: the miss chance is 2^-(ESS + 1/2) and equals the one-sided
    error 0.05 at the threshold for 90%; M is the 0.95 quantile of a sum of Bernoulli(pi_i), checked against brute
    force over all 2^6 outcomes; the extremes let the M worst prompts take their bounds, checked against every subset
    of M prompts. Bugs caught: a quantile off by one, the wrong tail, the best prompts freed instead of the worst."""
    assert miss_chance(ess_threshold(0.9)) == pytest.approx(0.05)
    assert ess_threshold(0.9) == pytest.approx(math.log2(20) - 0.5)
    assert float(miss_chance(1.0)) == pytest.approx(2**-1.5)

    chances = np.array([0.35, 0.3, 0.2, 0.1, 0.05, 0.01])
    for confidence in (0.5, 0.8, 0.9, 0.99):
        dist = np.zeros(len(chances) + 1)
        for outcome in itertools.product((0, 1), repeat=len(chances)):
            dist[sum(outcome)] += np.prod([c if o else 1 - c for c, o in zip(chances, outcome)])
        expected = int(np.argmax(np.cumsum(dist) >= (1 + confidence) / 2 - 1e-12))
        assert hidden_prompts(chances, confidence) == expected
    assert hidden_prompts(np.full(20, 1e-20), 0.9) == 0

    rng = np.random.default_rng(0)
    gain = rng.uniform(-0.5, 0.5, 7)
    low, high = gain - rng.uniform(0, 1, 7), gain + rng.uniform(0, 1, 7)
    for m in range(0, 4):
        lo, hi = _extremes(gain, low, high, m)
        subsets = list(itertools.combinations(range(7), m))
        assert lo == pytest.approx(min(np.where(np.isin(range(7), s), low, gain).mean() for s in subsets))
        assert hi == pytest.approx(max(np.where(np.isin(range(7), s), high, gain).mean() for s in subsets))


def test_healthy_ess_keeps_the_plain_interval():
    """With every prompt's ESS far above the threshold (alpha 2, 12 answers, 64 samples: ESS ~48), M = 0 and the
    verdict's interval is the plain bootstrap interval, widened on one side by at most the estimated SNIS bias
    (<= range / ESS per prompt); the verdict and its message are the plain ones. Bug caught: a rule that bounds
    prompts with healthy ESS (the diagnostic made useless where it works)."""
    rng = np.random.default_rng(3)
    logits = rng.normal(0.0, 1.2, size=(20, 12))
    logp = logits - np.log(np.exp(logits).sum(1, keepdims=True))
    r = (logp == logp.max(1, keepdims=True)).astype(float)  # the likeliest answer is right: sharpening helps
    rw, lp = _draw(logp, r, 64, rng)
    diag = covariance_diagnostic(rw, lp, 2.0, num_points=2, bootstrap=200)
    assert diag.min_ess_at_alpha > 2 * diag.min_ess and diag.hidden_prompts == 0 and diag.low_ess_prompts == 0
    slack = 1.0 / diag.min_ess_at_alpha
    assert diag.snis_gain_ci[0] - slack <= diag.gain_ci[0] <= diag.snis_gain_ci[0]
    assert diag.snis_gain_ci[1] <= diag.gain_ci[1] <= diag.snis_gain_ci[1] + slack
    assert diag.verdict == "help" and not diag.withheld and "hide" not in diag.message
    assert diag.to_dict()["hidden_prompts"] == 0
