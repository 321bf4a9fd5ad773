"""Evaluation: pass@k against brute force, the covariance diagnostic against theory and exact enumeration."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
import torch

from trl_power import theory
from trl_power.diagnostic import covariance_diagnostic
from trl_power.evaluation import (
    accuracy,
    evaluate_method,
    evaluate_sampling_output,
    format_results,
    group_by_prompt,
    mean_pass_at_k,
    pass_at_k,
)
from trl_power.tiny_models import build_model, build_tokenizer


def snis(r, lp, s) -> tuple[float, float]:
    """This test's own reference, one prompt, by definition: (Cov_{p_s}(r, log p), E_{p_s}[r] - mean r) with the
    self-normalised weights w_j ∝ p(y_j)^(s-1)."""
    r, lp = np.asarray(r, dtype=float), np.asarray(lp, dtype=float)
    w = np.exp((s - 1.0) * (lp - lp.max()))
    w /= w.sum()
    return float(w @ ((r - w @ r) * (lp - w @ lp))), float(w @ r - r.mean())


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


def test_predicted_gain_is_the_integral_of_the_curve_in_closed_form():
    """The gain is sum_j w_j(alpha) r_j - mean r, the exact integral of the estimated covariance curve: a converged
    quadrature of the curve (20001 points of Cov_{p_s}, computed by `snis`) agrees with it to 1e-6,
    while the 65-point trapezoid the diagnostic used to report is off by more than 3% on a 60-nat spread of log p
    (the curve is a peak of width ~1/60 in s there, narrower than the grid's 3/64)."""
    rng = np.random.default_rng(0)
    lp = np.concatenate(
        [[-10.0], rng.normal(-70.0, 1.0, size=63)]
    )  # one strong sample, 60 nats above the rest
    r = np.concatenate([[1.0], (rng.random(63) < 0.3).astype(float)])
    alpha = 4.0
    diag = covariance_diagnostic(r, lp, alpha=alpha, bootstrap=0)
    fine = np.linspace(1.0, alpha, 20001)
    integral = np.trapezoid([snis(r, lp, x)[0] for x in fine], fine)
    assert diag.predicted_gain == pytest.approx(integral, abs=1e-6)
    assert diag.predicted_gain == pytest.approx(snis(r, lp, alpha)[1], abs=1e-12)
    assert theory.predicted_gain(r, lp, alpha) == pytest.approx(snis(r, lp, alpha)[1], abs=1e-12)
    coarse = np.trapezoid(diag.covariance, diag.s)
    assert abs(coarse - diag.predicted_gain) > 0.03 * abs(diag.predicted_gain)
    for k in (0, 32, 64):
        assert diag.covariance[k] == pytest.approx(snis(r, lp, diag.s[k])[0], abs=1e-12)
        assert theory.power_covariance(r, lp, diag.s[k]) == pytest.approx(diag.covariance[k], abs=1e-12)
    assert diag.ess_at_alpha == pytest.approx(theory.effective_sample_size(theory.power_weights(lp, alpha)))
    with pytest.raises(ValueError):
        covariance_diagnostic(r, lp, alpha=3.0, bootstrap=5, interval="bca")
    with pytest.raises(ValueError, match="resample"):
        covariance_diagnostic(r, lp, alpha=3.0, bootstrap=5, resample="both")


def _population(num_types: int, num_answers: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Prompt types with trap-shaped answer distributions: log p [M, K] and rewards r [M, K] (the likeliest answer is
    right with probability 0.6, a few answers are right)."""
    rng = np.random.default_rng(seed)
    logits = rng.normal(0.0, 1.2, size=(num_types, num_answers))
    logp = logits - np.log(np.exp(logits).sum(1, keepdims=True))
    r = (rng.random((num_types, num_answers)) < 0.3).astype(float)
    top = logp.argmax(1)
    r[np.arange(num_types), top] = (rng.random(num_types) < 0.6).astype(float)
    return logp, r


def _exact_gain(logp: np.ndarray, r: np.ndarray, alpha: float) -> np.ndarray:
    p = np.exp(logp)
    pa = np.exp(alpha * logp)
    pa /= pa.sum(1, keepdims=True)
    return (pa * r).sum(1) - (p * r).sum(1)


@pytest.mark.parametrize("resample", ["samples", "prompts"])
def test_bootstrap_intervals_cover_at_their_level(resample):
    """Coverage of the 90% interval by simulation, 200 replications of 20 prompts x 64 base samples, alpha 2.
    resample="samples": the prompts are fixed (one draw of 20 prompt types) and the truth is their mean gain;
    resample="prompts": each replication draws 20 new prompts from 200 types and the truth is the mean over all
    types. The count of covering intervals is Binomial(200, 0.9) if the level is right: the test asks for 0.9 within 3
    standard deviations (sd = 0.021). Power: the former two-stage bootstrap (prompts, then samples within them) gives
    intervals four times as wide for fixed prompts here (0.096 against 0.023), which cover 100% and fail the upper
    bound."""
    alpha, P, n, reps = 2.0, 20, 64, 200
    logp, r = _population(200, 12, seed=1)
    gains = _exact_gain(logp, r, alpha)
    rng = np.random.default_rng(2)
    fixed = rng.choice(200, size=P, replace=False)
    covered = 0
    for rep in range(reps):
        types = fixed if resample == "samples" else rng.choice(200, size=P)
        truth = gains[types].mean() if resample == "samples" else gains.mean()
        p = np.exp(logp[types])
        draws = np.array([rng.choice(12, size=n, p=pi / pi.sum()) for pi in p])
        lp = np.take_along_axis(logp[types], draws, 1)
        rw = np.take_along_axis(r[types], draws, 1)
        diag = covariance_diagnostic(
            rw, lp, alpha=alpha, num_points=2, bootstrap=200, seed=rep, resample=resample
        )
        covered += diag.gain_ci[0] <= truth <= diag.gain_ci[1]
    sd = math.sqrt(0.9 * 0.1 / reps)
    print(f"coverage {resample}: {covered / reps:.3f}")
    assert abs(covered / reps - 0.9) <= 3 * sd, covered / reps


def test_diagnostic_normalises_weights_per_prompt():
    """Prompts with very different log p scales: the curve is the mean of per-prompt estimates."""
    rng = np.random.default_rng(1)
    r = rng.integers(0, 2, size=(3, 20)).astype(float)
    lp = rng.normal(-4, 1, size=(3, 20)) + np.array([[0.0], [-30.0], [-60.0]])
    diag = covariance_diagnostic(r, lp, alpha=2.0, num_points=9, bootstrap=0)
    for k, s in enumerate(diag.s):
        expected = np.mean([snis(r[i], lp[i], s)[0] for i in range(3)])
        assert diag.covariance[k] == pytest.approx(expected, abs=1e-12)
    flat = covariance_diagnostic(
        r.ravel(), lp.ravel(), alpha=2.0, num_points=9, bootstrap=0, groups=np.repeat(np.arange(3), 20)
    )
    assert flat.covariance == pytest.approx(diag.covariance, abs=1e-12)
    ragged = covariance_diagnostic(
        [r[0], r[1][:5]], [lp[0], lp[1][:5]], alpha=2.0, num_points=9, bootstrap=20
    )
    expected = np.mean([snis(r[0], lp[0], 2.0)[1], snis(r[1][:5], lp[1][:5], 2.0)[1]])
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
    assert abs(diag.predicted_gain - exact_gain) < 4 * sigma_gain
    # the bootstrap standard error estimates the same sigma (within a factor 1.5)
    assert sigma_gain / 1.5 < diag.gain_stderr < 1.5 * sigma_gain


def test_exact_tiny_model_is_enumerated(exact_tiny):
    lp, r = exact_tiny
    assert len(lp) == 1 + 4 + 16 + 64  # EOS after 0, 1, 2 tokens, or 3 tokens cut
    assert 0 < r.mean() < 1
    assert torch.isfinite(torch.as_tensor(lp)).all()


# ----- compute-matched baselines and the paired test ------------------------------------------------------------------


def test_best_of_n_and_majority_vote_pick_what_they_say():
    from trl_power.evaluation import best_of_n, majority_vote

    rewards = [[1, 0, 0, 1, 1]]  # the fifth answer is a remainder: dropped at n = 2
    self_rewards = [[-1.0, -2.0, -0.5, -3.0, 0.0]]
    assert best_of_n(rewards, self_rewards, 2) == [[1.0, 0.0]]
    assert best_of_n([[0, 1]], [[-1.0, -1.0]], 2) == [[0.0]]  # a tie keeps the first
    answers = [[3, 5, 5, None, 7, 7, None, None, 2, 4, 4, 2]]
    right = [[0, 1, 1, 0, 0, 0, 0, 0, 1, 0, 0, 1]]
    # sets of 4: {3,5,5,-} -> 5 (right); {7,7,-,-} -> 7 (wrong); {2,4,4,2} -> tie, 2 seen first (right)
    assert majority_vote(answers, right, 4) == [[1.0, 0.0, 1.0]]
    assert majority_vote([[None, None]], [[0, 0]], 2) == [[0.0]]
    with pytest.raises(ValueError, match="at least n=4"):
        best_of_n([[1, 0]], [[0.0, 0.0]], 4)


def test_best_of_n_matches_its_closed_form():
    """One prompt, 4 answers with P(answer a) = q_a and distinct log p: best-of-n keeps the answer of highest log p
    among n draws, so P(keep a) = F(a)^n - F(a-)^n with F the law's CDF in log p order; the mean kept reward over
    20000 sets is within 4 standard errors of sum_a r_a P(keep a). Power: keeping the lowest log p, or a random
    member of the set, moves the mean by > 0.15 (> 40 standard errors)."""
    from trl_power.evaluation import best_of_n

    rng = np.random.default_rng(0)
    q, lp, r = np.array([0.5, 0.3, 0.15, 0.05]), np.array([-4.0, -3.0, -2.0, -1.0]), np.array([0, 1, 0, 1.0])
    n, sets = 3, 20000
    draws = rng.choice(4, size=sets * n, p=q)
    kept = np.array(best_of_n([r[draws]], [lp[draws]], n)[0])
    F = np.cumsum(q)  # answers are already in increasing log p
    keep = F**n - np.concatenate([[0.0], F[:-1]]) ** n
    expected = float(keep @ r)
    assert abs(kept.mean() - expected) < 4 * kept.std() / np.sqrt(sets)
    lowest = float(((1 - np.concatenate([[0.0], F[:-1]])) ** n - (1 - F) ** n) @ r)
    assert abs(lowest - expected) > 0.15 and abs(float(q @ r) - expected) > 0.15


def test_paired_test_interval_and_level():
    """The interval is the paired t-interval (scipy's ttest_rel); under H0 (A and B the same method) the permutation
    p-value rejects at 5% in 5% of 400 simulated comparisons (binomial 99.9% range 2%-9%); with a +0.15 effect on
    60 prompts x 4 answers it rejects in >= 80% of 200 (normal approximation: sd(d_i) ~ 0.35, z = 3.3, power 0.91)."""
    from scipy import stats

    from trl_power.evaluation import paired_test

    rng = np.random.default_rng(0)
    a = rng.integers(0, 2, size=(30, 4)).astype(float)
    b = rng.integers(0, 2, size=(30, 4)).astype(float)
    res = paired_test(a, b)
    ci = stats.ttest_rel(a.mean(1), b.mean(1)).confidence_interval(0.95)
    assert res.ci == pytest.approx((ci.low, ci.high))
    assert res.mean_difference == pytest.approx(a.mean() - b.mean())

    def draw(effect, P=60):
        level = rng.uniform(0.2, 0.7, size=P)  # prompts differ in difficulty: the pairing removes it
        x = (rng.random((P, 4)) < level[:, None] + effect).astype(float)
        y = (rng.random((P, 4)) < level[:, None]).astype(float)
        return paired_test(x, y, resamples=2000, seed=int(rng.integers(1 << 30))).p_value

    null = np.mean([draw(0.0) < 0.05 for _ in range(400)])
    assert 0.02 <= null <= 0.09, null
    power = np.mean([draw(0.15) < 0.05 for _ in range(200)])
    assert power >= 0.8, power


def test_paired_test_exact_for_few_prompts():
    """With P <= 16 prompts every sign pattern is enumerated: d = (1, 1, 1, 1) gives p = 2/16 exactly."""
    from trl_power.evaluation import paired_test

    res = paired_test([[1.0]] * 4, [[0.0]] * 4)
    assert res.p_value == pytest.approx(2 / 16)
    with pytest.raises(ValueError, match="at least 2 prompts"):
        paired_test([[1.0]], [[0.0]])
