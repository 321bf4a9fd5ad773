"""Evaluation: pass@k against brute force, the covariance diagnostic against theory and exact enumeration."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
import torch

from trl_power import theory
from trl_power.evaluation import (
    accuracy,
    covariance_diagnostic,
    evaluate_method,
    evaluate_sampling_output,
    format_results,
    group_by_prompt,
    mean_pass_at_k,
    pass_at_k,
)
from trl_power.tiny_models import build_model, build_tokenizer


def brute_force_pass_at_k(n: int, c: int, k: int) -> float:
    """Share of the k-subsets of n answers (the first c right) that contain a right answer."""
    subsets = list(itertools.combinations(range(n), k))
    return sum(any(i < c for i in s) for s in subsets) / len(subsets)


@pytest.mark.parametrize("n", [1, 2, 5, 8])
def test_pass_at_k_matches_brute_force(n):
    for c in range(n + 1):
        for k in range(1, n + 1):
            assert pass_at_k(n, c, k) == pytest.approx(brute_force_pass_at_k(n, c, k), abs=1e-12)


def test_pass_at_k_edges_and_errors():
    assert pass_at_k(10, 0, 3) == 0.0
    assert pass_at_k(10, 8, 3) == 1.0  # fewer than k wrong answers
    assert pass_at_k(10, 3, 1) == pytest.approx(0.3)
    assert pass_at_k(200, 17, 50) == pytest.approx(1 - math.comb(183, 50) / math.comb(200, 50), rel=1e-9)
    for bad in [(5, 6, 1), (5, -1, 1), (5, 2, 0), (5, 2, 6)]:
        with pytest.raises(ValueError):
            pass_at_k(*bad)


def test_accuracy_and_method_result_weight_prompts_equally():
    rewards = [[1, 0, 0, 0], [1, 1]]  # prompt means 0.25 and 1.0
    assert accuracy(rewards) == pytest.approx(0.625)
    assert accuracy([1, 0, 1, 1]) == pytest.approx(0.75)  # a flat list is one prompt
    assert mean_pass_at_k(rewards, 2) == pytest.approx((pass_at_k(4, 1, 2) + 1.0) / 2)
    res = evaluate_method("plain", rewards, [[-1, -2, -3, -4], [-5, -6]], tokens_forwarded=60, seconds=3.0)
    assert res.accuracy == pytest.approx(0.625)
    assert res.pass_at_k.keys() == {1}  # k = 4 and 8 exceed the 2 answers of the second prompt
    assert res.pass_at_k[1] == pytest.approx(res.accuracy)
    assert res.mean_self_reward == pytest.approx(-3.5)
    assert res.tokens_per_answer == pytest.approx(10.0) and res.seconds_per_answer == pytest.approx(0.5)
    assert res.num_prompts == 2 and res.num_answers == 6
    assert res.accuracy_stderr == pytest.approx(np.std([0.25, 1.0], ddof=1) / math.sqrt(2))
    assert "| plain | 0.625" in format_results([res])
    with pytest.raises(ValueError):
        evaluate_method("plain", rewards, [-1.0, -2.0], 1, 1.0)


def test_evaluate_sampling_output_groups_rows_by_prompt():
    from types import SimpleNamespace

    out = SimpleNamespace(
        completions=["answer 1", "answer 2", "answer 1", "junk"],
        base_logprobs=[-1.0, -2.0, -3.0, -4.0],
        prompt_indices=[1, 0, 0, 1],
        stats={"tokens_forwarded": 40, "seconds": 2.0, "acceptance_rate": 0.5, "note": "x"},
    )
    prompts = ["want 2", "want 1"]
    res = evaluate_sampling_output("mh", prompts, out, lambda p, c: float(c == "answer " + p[-1]), ks=(1, 2))
    assert res.accuracy == pytest.approx((0.5 + 0.5) / 2) and res.pass_at_k[2] == pytest.approx(1.0)
    assert res.tokens_per_answer == 10.0 and res.seconds_per_answer == 0.5
    assert res.extra["acceptance_rate"] == 0.5 and "note" not in res.extra
    assert group_by_prompt([1, 2, 3], [1, 0, 1], 3) == [[2.0], [1.0, 3.0], []]


def test_diagnostic_matches_theory_on_one_prompt():
    rng = np.random.default_rng(0)
    lp = rng.normal(-5, 2, size=50)
    r = (lp + rng.normal(0, 1, size=50) > -5).astype(float)
    diag = covariance_diagnostic(r, lp, alpha=3.0, num_points=33, bootstrap=50)
    for s, cov in zip(diag.s, diag.covariance):
        assert cov == pytest.approx(theory.power_covariance(r, lp, s), abs=1e-12)
    assert diag.predicted_gain == pytest.approx(theory.predicted_gain(r, lp, 3.0, num_points=33), abs=1e-12)
    assert diag.ess_at_alpha == pytest.approx(theory.effective_sample_size(theory.power_weights(lp, 3.0)))
    assert diag.base_reward == pytest.approx(r.mean())
    assert diag.gain_ci[0] <= diag.predicted_gain <= diag.gain_ci[1]
    pct = covariance_diagnostic(r, lp, alpha=3.0, num_points=33, bootstrap=50, interval="percentile")
    assert pct.gain_ci[0] < pct.gain_ci[1] and pct.gain_stderr == pytest.approx(diag.gain_stderr)
    with pytest.raises(ValueError):
        covariance_diagnostic(r, lp, alpha=3.0, bootstrap=5, interval="bca")


def test_diagnostic_normalises_weights_per_prompt():
    """Prompts with very different log p scales: the curve is the mean of per-prompt estimates."""
    rng = np.random.default_rng(1)
    r = rng.integers(0, 2, size=(3, 20)).astype(float)
    lp = rng.normal(-4, 1, size=(3, 20)) + np.array([[0.0], [-30.0], [-60.0]])
    diag = covariance_diagnostic(r, lp, alpha=2.0, num_points=9, bootstrap=0)
    for k, s in enumerate(diag.s):
        expected = np.mean([theory.power_covariance(r[i], lp[i], s) for i in range(3)])
        assert diag.covariance[k] == pytest.approx(expected, abs=1e-12)
    flat = covariance_diagnostic(
        r.ravel(), lp.ravel(), alpha=2.0, num_points=9, bootstrap=0, groups=np.repeat(np.arange(3), 20)
    )
    assert flat.covariance == pytest.approx(diag.covariance, abs=1e-12)
    ragged = covariance_diagnostic(
        [r[0], r[1][:5]], [lp[0], lp[1][:5]], alpha=2.0, num_points=9, bootstrap=20
    )
    expected = np.mean(
        [theory.predicted_gain(r[0], lp[0], 2.0, 9), theory.predicted_gain(r[1][:5], lp[1][:5], 2.0, 9)]
    )
    assert ragged.predicted_gain == pytest.approx(expected, abs=1e-12)


def test_diagnostic_verdicts():
    lp = np.tile(np.log([0.5, 0.3, 0.1, 0.1]), (20, 8))
    good = (lp > -1).astype(float)  # the likeliest answer is right
    helps = covariance_diagnostic(good, lp, alpha=4.0, bootstrap=100)
    hurts = covariance_diagnostic(1 - good, lp, alpha=4.0, bootstrap=100)
    flat = covariance_diagnostic(np.ones_like(lp), lp, alpha=4.0, bootstrap=100)
    assert helps.verdict == "help" and helps.predicted_gain > 0 and "should help" in helps.message
    assert helps.gain_ci[1] <= 1 - helps.base_reward + 1e-12  # clipped to the feasible gains
    assert hurts.verdict == "hurt" and hurts.predicted_gain == pytest.approx(-helps.predicted_gain)
    assert flat.verdict == "unclear" and flat.predicted_gain == pytest.approx(0.0, abs=1e-12)
    with pytest.raises(ValueError):
        covariance_diagnostic(good, lp, alpha=1.0)
    with pytest.raises(ValueError):
        covariance_diagnostic(good[:, :3], lp, alpha=2.0)


# ----- against exact enumeration on a tiny model ---------------------------------------------------


@pytest.fixture(scope="module")
def exact_tiny():
    """All completions of a random tiny model (vocab 5, <= 3 new tokens) with exact log p, and a reward."""
    tok = build_tokenizer(["a", "b", "c", "d"], with_pad=False)
    model = build_model(len(tok), seed=3, hidden_size=16, num_heads=2, initializer_range=0.6)
    logp, _ = theory.exact_sequence_logprobs(model, tok, [1, 2], max_new_tokens=3)
    seqs = list(logp)
    lp = np.array([logp[s] for s in seqs])
    reward = np.array([float(2 in s) for s in seqs])  # r(y) = 1 when the completion uses token "b"
    return lp, reward


def _exact_moments(lp: np.ndarray, r: np.ndarray, s: float) -> tuple[np.ndarray, float, float, float]:
    """Exact p_s(y) ∝ p(y)^s over all completions, E_{p_s}[r], E_{p_s}[log p] and Cov_{p_s}(r, log p)."""
    w = np.exp(s * lp - (s * lp).max())
    w /= w.sum()
    mr, ml = w @ r, w @ lp
    return w, mr, ml, float(w @ ((r - mr) * (lp - ml)))


def test_covariance_estimator_against_exact_enumeration(exact_tiny):
    """SNIS estimates from n base samples agree with the exact p_s moments within 4 delta-method sigmas.

    Tolerance. With y_1..y_n ~ p and normalised weights w̃_s(y) = p_s(y) / p(y) (E_p[w̃_s] = 1), the
    self-normalised estimate of a p_s-moment theta = E_{p_s}[g] is asymptotically normal with variance
    E_p[w̃_s(y)^2 (g(y) - theta)^2] / n (delta method on the ratio of two means). For the covariance,
    g = (r - E_{p_s} r)(log p - E_{p_s} log p) (the centring terms add nothing at first order); for the gain,
    the estimate is SNIS(r, alpha) - mean(r), with influence w̃_alpha (r - E_{p_alpha} r) - (r - E_p r).
    Every variance is computed exactly from the enumerated p; the test allows 4 sigmas (plus the exact
    trapezoid error of the 65-point grid for the gain); with a fixed seed it is deterministic.
    """
    lp, r = exact_tiny
    p = np.exp(lp)
    assert p.sum() == pytest.approx(1.0, abs=1e-6)
    p = p / p.sum()
    alpha, n = 3.0, 4000
    idx = np.random.default_rng(0).choice(len(p), size=n, p=p)  # = ancestral sampling from the model
    diag = covariance_diagnostic(r[idx], lp[idx], alpha=alpha, num_points=65, bootstrap=100)

    grid = np.array(diag.s)
    exact_curve = []
    for k, s in enumerate(grid):
        ws, mr, ml, cov = _exact_moments(lp, r, s)
        exact_curve.append(cov)
        wt = ws / p
        sigma = math.sqrt(float(p @ (wt**2 * ((r - mr) * (lp - ml) - cov) ** 2)) / n)
        if k in (0, 32, 64):
            assert abs(diag.covariance[k] - cov) < 4 * sigma, (s, diag.covariance[k], cov, sigma)
    assert abs(exact_curve[0]) > 0.05  # a non-trivial test: r and log p covary

    wa, mra, _, _ = _exact_moments(lp, r, alpha)
    exact_gain = mra - p @ r
    influence = wa / p * (r - mra) - (r - p @ r)
    sigma_gain = math.sqrt(float(p @ influence**2) / n)
    trapezoid_error = abs(np.trapezoid(exact_curve, grid) - exact_gain)
    assert abs(diag.predicted_gain - exact_gain) < 4 * sigma_gain + 2 * trapezoid_error
    # the bootstrap standard error estimates the same sigma (within a factor 1.5)
    assert sigma_gain / 1.5 < diag.gain_stderr < 1.5 * sigma_gain


def test_exact_tiny_model_is_enumerated(exact_tiny):
    lp, r = exact_tiny
    assert len(lp) == 1 + 4 + 16 + 64  # EOS after 0, 1, 2 tokens, or 3 tokens cut
    assert 0 < r.mean() < 1
    assert torch.isfinite(torch.as_tensor(lp)).all()
