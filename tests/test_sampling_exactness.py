"""Samplers against exact enumeration on enumerable tiny models (vocab 5, <= 3 new tokens), both targets.

Three kinds of check, each with power against the bugs it is for (tests/test_mutations.py shows each caught):

- MH: the chain's output law is computed exactly (`exact_laws.MHKernel`: the kernel of docs/sampling.md built from
  the model's exact conditionals, mu_0 K^k after k steps). The test asserts (i) p_alpha is invariant under K
  (detailed balance, to 1e-6), (ii) mu_0 K^k is within TV 0.01 of p_alpha, and (iii) Pearson's chi-square of the
  sampler's n outputs against mu_0 K^k does not reject at level 1e-3; and it asserts its own power: the same test
  rejects the law of each wrong kernel (no cut-point correction log(L/L'), no proposal correction, alpha - 1) with
  probability >= 0.98 (noncentral chi-square). The old TV test caught a dropped log(L/L') with probability ~0.23.
- SMC and SIR weighted particle sets: the unnormalised estimate gamma_hat(y) = Ẑ * sum_k w_k 1{y_k = y} of a run
  (Ẑ = `log_z`, w the normalised weights) is unbiased for gamma(y) = p(y)^alpha (1{y finished} for the finished
  target) at any number of particles: a Hotelling T^2 test of the mean over R runs against gamma (cells hit by
  fewer than 50 runs pooled) at level 1e-3. Few particles (N = 4) and resampling at every step
  (ess_threshold = 1) make weight bugs visible: alpha - 1 or no -log q in the increment, weight accumulated by
  finished particles, weights not reset after resampling, cut particles kept in the finished target.
- The samplers' single outputs: the exact sampler by chi-square against p_alpha; SIR/SMC resampled outputs (law
  within O(1/N) of p_alpha) by TV(p_alpha, p̂_n) <= 1/2 sum_y sqrt(p(y)(1-p(y))/n) + sqrt(log(1/δ)/(2n)), the
  probability-(1 - δ) bound for n iid draws (Jensen for the mean, McDiarmid for the deviation), δ = 1e-3.

Proposal temperature 0.5 where not stated: the reference's 1/alpha = 0.25 at alpha = 4 proposes the random model's
one-token answer <eos> with probability ~1e-3 while p_alpha gives it several percent; a finite budget cannot see it
(the proposal blind spot, docs/sampling.md). The samplers stay correct for any proposal
(`test_sir_weighted_set_is_consistent_with_the_reference_proposal`).
"""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch
from exact_laws import MUTATIONS, MHKernel, chi_square, chi_square_power, total_variation_vec
from scipy import stats

from trl_power import PowerSampler, PowerSamplingConfig, exact_power_distribution
from trl_power.sampling.exact import exact_sequence_logprobs
from trl_power.scoring import sequence_logprobs
from trl_power.theory import empirical_distribution, expected_tv_bound, total_variation
from trl_power.tiny_models import all_completions

T = 3
N_SAMPLES = 1500
LEVEL = 1e-3


def _sample(model, method, alpha, finished_only, n=N_SAMPLES, **kwargs):
    kwargs.setdefault("proposal_temperature", 0.5)
    cfg = PowerSamplingConfig(
        method=method,
        alpha=alpha,
        max_new_tokens=T,
        num_samples_per_prompt=n,
        seed=11,
        finished_only=finished_only,
        **kwargs,
    )
    return PowerSampler(model, None, cfg).sample([[4]])


# ----- MH: the exact law of the chain ----------------------------------------------------------------------------------

# (finished_only, alpha, proposal tau, steps): settings where the chain is within TV 0.01 of p_alpha. With the finished
# target a proposal that ends cut is rejected, so a proposal that rarely finishes mixes slowly (tau 0.5, alpha 2:
# TV 0.45 after 40 steps); tau 1 finishes more often.
MH_CASES = [(False, 2.0, 0.5, 40), (False, 4.0, 0.5, 40), (True, 2.0, 1.0, 100)]


@pytest.mark.parametrize("finished_only, alpha, tau, steps", MH_CASES)
def test_mh_chain_has_the_law_of_the_exact_kernel(random_model, finished_only, alpha, tau, steps):
    kernel = MHKernel(random_model, [4], vocab=5, horizon=T, tau=tau)
    target = kernel.as_vector(kernel.power_law(alpha, finished_only))
    K = kernel.matrix(alpha, finished_only=finished_only)
    assert np.abs(target @ K - target).max() < 1e-6  # p_alpha is the kernel's stationary law
    law = kernel.law_after(steps, alpha, finished_only=finished_only)
    assert total_variation_vec(kernel.as_vector(law), target) < 0.01
    for mutation in MUTATIONS[1:]:
        wrong = kernel.law_after(steps, alpha, finished_only=finished_only, mutation=mutation)
        power = chi_square_power(law, wrong, N_SAMPLES, LEVEL)
        assert power > 0.98, (mutation, power)
    out = _sample(
        random_model,
        "mh",
        alpha,
        finished_only,
        mcmc_steps=steps,
        block_size=T,
        batch_size=750,
        proposal_temperature=tau,
    )
    stat, df, pvalue = chi_square(out.completion_ids, law)
    assert pvalue > LEVEL, (stat, df, pvalue)


def test_entropy_cut_kernels_keep_p_alpha(random_model, trap_model):
    """Entropy-placed cuts (q_cut(i | y) = w/L + (1-w) H_i / sum H) with the cut ratio q_cut(i | y') / q_cut(i | y) leave
    p_alpha invariant for both targets, to 1e-6 (computed: ~3e-8); with the uniform cuts' correction log(L/L') or with
    none they do not (violations >= 1.8e-5 on these models: the identity check has the power to see them)."""
    from exact_laws import CUT_MUTATIONS

    for model in (random_model, trap_model):
        for finished_only, alpha, tau in [(False, 2.0, 0.5), (True, 2.0, 1.0)]:
            kernel = MHKernel(model, [4], vocab=5, horizon=T, tau=tau)
            target = kernel.as_vector(kernel.power_law(alpha, finished_only))
            K = kernel.matrix(alpha, finished_only=finished_only, cut="entropy")
            assert np.abs(target @ K - target).max() < 1e-6
            for mutation in CUT_MUTATIONS:
                wrong = kernel.matrix(alpha, finished_only=finished_only, cut="entropy", mutation=mutation)
                assert np.abs(target @ wrong - target).max() > 1e-5, mutation


def test_entropy_cut_mh_chain_has_the_law_of_the_exact_kernel(trap_model):
    """The sampler with mh_cut="entropy" against mu_0 K^60 of the exact entropy-cut kernel (the trap model: its
    entropies differ most between positions), chi-square at level 1e-3, with power >= 0.98 against the entropy cuts
    with the uniform correction, with no cut correction and the three wrong acceptances (computed: 1.0 each)."""
    from exact_laws import CUT_MUTATIONS

    alpha, tau, steps = 2.0, 0.5, 60
    kernel = MHKernel(trap_model, [4], vocab=5, horizon=T, tau=tau)
    target = kernel.as_vector(kernel.power_law(alpha, False))
    law = kernel.law_after(steps, alpha, finished_only=False, cut="entropy")
    assert total_variation_vec(kernel.as_vector(law), target) < 0.01
    for mutation in CUT_MUTATIONS + MUTATIONS[1:]:
        wrong = kernel.law_after(steps, alpha, finished_only=False, cut="entropy", mutation=mutation)
        power = chi_square_power(law, wrong, N_SAMPLES, LEVEL)
        assert power > 0.98, (mutation, power)
    out = _sample(
        trap_model,
        "mh",
        alpha,
        False,
        mcmc_steps=steps,
        block_size=T,
        batch_size=1500,
        proposal_temperature=tau,
        mh_cut="entropy",
    )
    stat, df, pvalue = chi_square(out.completion_ids, law)
    assert pvalue > LEVEL, (stat, df, pvalue)


@pytest.mark.parametrize("rule", ["current_length", "current_length_full"])
def test_current_length_rules_are_not_exact_and_collapse_onto_short_answers(random_model, rule):
    """A current-length proposal is never longer than the current answer, so length never grows: p_alpha is not
    stationary, and the chain's mass drifts onto the shortest answers (computed exactly)."""
    alpha = 2.0
    kernel = MHKernel(random_model, [4], vocab=5, horizon=T, tau=0.5)
    target = kernel.as_vector(kernel.power_law(alpha, finished_only=False))
    K = kernel.matrix(alpha, rule=rule, finished_only=False)
    assert np.abs(target @ K - target).max() > 1e-3
    lengths = np.array([len(s) for s in kernel.states])
    short = lengths == 1
    laws = [kernel.initial_law() @ np.linalg.matrix_power(K, k) for k in (0, 40, 400)]
    assert laws[0] @ short < laws[1] @ short < laws[2] @ short
    assert laws[2] @ short > 2 * (target @ short)
    assert laws[2] @ lengths < target @ lengths


# ----- SMC / SIR: unbiased unnormalised estimates ----------------------------------------------------------------------


def _hotelling_pvalue(phi: np.ndarray, gamma: np.ndarray, hit_runs: np.ndarray, min_runs: int = 50) -> float:
    """p-value of H0: E[phi_r] = gamma (rows r iid), Hotelling's T^2 with F calibration; cells hit in fewer than
    `min_runs` runs are pooled into one."""
    big = hit_runs >= min_runs
    cols = [phi[:, big]]
    means = [gamma[big]]
    if (~big).any():
        cols.append(phi[:, ~big].sum(1, keepdims=True))
        means.append(gamma[~big].sum(keepdims=True))
    x, mu = np.concatenate(cols, 1), np.concatenate(means)
    R, d = x.shape
    diff = x.mean(0) - mu
    S = np.cov(x, rowvar=False)
    t2 = R * float(diff @ np.linalg.solve(S, diff))
    return float(stats.f.sf(t2 * (R - d) / (d * (R - 1)), d, R - d))


def unbiasedness_pvalue(model, out, alpha: float, finished_only: bool, runs: int, particles: int) -> float:
    comps = all_completions(5, 0, T)
    index = {c: k for k, c in enumerate(comps)}
    logp = sequence_logprobs(model, [[4]] * len(comps), [list(c) for c in comps]).double().numpy()
    gamma = np.exp(alpha * logp)
    if finished_only:
        gamma = gamma * np.array([c[-1] == 0 for c in comps])
    z = np.exp(np.array(out.log_z))
    phi = np.zeros((runs, len(comps)))
    w = np.array(out.weights).reshape(runs, particles)
    outside = [c for c in out.completion_ids if tuple(c) not in index]
    assert not outside, f"completions that are no answer of at most {T} tokens: {outside[:3]}"
    for k, c in enumerate(out.completion_ids):
        r = k // particles
        phi[r, index[tuple(c)]] += z[r] * w[r, k % particles]
    return _hotelling_pvalue(phi, gamma, (phi > 0).sum(0))


RUNS, PARTICLES = 4000, 4


@pytest.mark.parametrize("finished_only", [True, False])
@pytest.mark.parametrize("method, ess_threshold", [("sir", 0.5), ("smc", 1.0), ("smc", 0.5)])
def test_weighted_particles_are_unbiased(random_model, method, ess_threshold, finished_only):
    alpha = 2.0
    out = _sample(
        random_model,
        method,
        alpha,
        finished_only,
        n=RUNS,
        num_particles=PARTICLES,
        ess_threshold=ess_threshold,
        return_all_particles=True,
        batch_size=4000,
    )
    assert len(out.log_z) == RUNS
    if method == "smc" and ess_threshold == 1.0:
        assert out.stats["resample_count"] >= RUNS  # resampled at almost every step
    pvalue = unbiasedness_pvalue(random_model, out, alpha, finished_only, RUNS, PARTICLES)
    assert pvalue > LEVEL, pvalue


@pytest.mark.parametrize("finished_only", [True, False])
def test_annealed_smc_particles_are_unbiased(random_model, finished_only):
    """Tempered intermediate targets p(y_{1:t})^{alpha_t}, alpha_t = 1 + (alpha - 1) min(1, t / 3) over the 3 tokens
    (every answer stops before the schedule ends, so the final move to alpha matters): Ẑ * weights stay unbiased for
    p^alpha. Power: a schedule that tempers only each new token (alpha_t * log p(y_t), the prefix's exponent never
    moved) is caught (tests/test_mutations.py)."""
    alpha = 2.0
    out = _sample(
        random_model,
        "smc",
        alpha,
        finished_only,
        n=RUNS,
        num_particles=PARTICLES,
        ess_threshold=1.0,
        anneal_tokens=T,
        return_all_particles=True,
        batch_size=4000,
    )
    pvalue = unbiasedness_pvalue(random_model, out, alpha, finished_only, RUNS, PARTICLES)
    assert pvalue > LEVEL, pvalue


# ----- single outputs --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("finished_only", [True, False])
@pytest.mark.parametrize("alpha", [2.0, 4.0])
def test_exact_sampler_draws_p_alpha(random_model, alpha, finished_only):
    exact = exact_power_distribution(random_model, None, [4], alpha, T, finished_only=finished_only)
    assert all(k[-1] == 0 for k in exact) == finished_only
    out = _sample(random_model, "exact", alpha, finished_only)
    assert chi_square(out.completion_ids, exact)[2] > LEVEL


@pytest.mark.parametrize("finished_only, alpha, tau", [(True, 4.0, 1.0), (False, 2.0, 0.5)])
@pytest.mark.parametrize("method", ["smc", "sir"])
def test_resampled_outputs_reach_p_alpha(random_model, method, alpha, finished_only, tau):
    """With the finished target the proposal must finish often: at tau 0.5 only 6.8% of this model's proposals end
    with EOS within 3 tokens, at tau 1 20.6% (a 64-particle run then finds none w.p. 4e-7; such a run would return
    a cut answer, counted in the TV). 64 particles: SIR's O(1/N) bias at alpha 4 with 32 is ~0.09 on this model."""
    exact = exact_power_distribution(random_model, None, [4], alpha, T, finished_only=finished_only)
    out = _sample(
        random_model,
        method,
        alpha,
        finished_only,
        num_particles=64,
        batch_size=6400,
        proposal_temperature=tau,
    )
    if finished_only:
        assert out.stats["runs_without_finished"] == sum(not f for f in out.finished)
    tv = total_variation(empirical_distribution(out.completion_ids), exact)
    assert tv <= expected_tv_bound(exact, N_SAMPLES), (method, alpha, tv)


STOP_CASES = [("exact", {}), ("smc", dict(num_particles=64)), ("sir", dict(num_particles=64)),
              ("mh", dict(mcmc_steps=60, block_size=T)), ("lookahead", dict(lookahead_candidates=5,
              lookahead_rollouts=64, lookahead_horizon=T))]  # fmt: skip


@pytest.mark.parametrize("method, settings", STOP_CASES)
def test_stop_strings_end_answers_and_the_target_is_over_them(random_model, tokenizer, method, settings):
    """ "c" (token 3) as a stop string: every answer ends at its first "c" or <eos> and counts as finished, and the
    finished target is p^alpha over the answers ending with either (enumerated with both as end tokens). Exact by
    chi-square; SMC, SIR, MH (60 steps: mixes fast, more proposals finish) and lookahead (every candidate, 64
    rollouts reaching the horizon: near-exact) by the TV bound. Power: answers that went on after a "c" lie outside the
    enumerated support (asserted absent); stopped answers not counted as finished would lose their share of p^alpha,
    which is asserted to exceed twice the TV bound."""
    alpha, stops = 2.0, {0, 3}
    exact = exact_power_distribution(random_model, tokenizer, [4], alpha, T, stop_strings=["c"])
    assert all(k[-1] in stops and not set(k[:-1]) & stops for k in exact)
    cfg = PowerSamplingConfig(method=method, alpha=alpha, max_new_tokens=T, num_samples_per_prompt=N_SAMPLES, seed=5,
                              stop_strings=["c"], batch_size=6400, **settings)  # fmt: skip
    out = PowerSampler(random_model, tokenizer, cfg).sample([[4]])
    assert all(not set(c[:-1]) & stops for c in out.completion_ids)
    assert out.finished == [bool(c) and c[-1] in stops for c in out.completion_ids]
    assert sum(m for k, m in exact.items() if k[-1] == 3) > 2 * expected_tv_bound(exact, N_SAMPLES)
    if method == "exact":
        assert chi_square(out.completion_ids, exact)[2] > LEVEL
    else:
        tv = total_variation(empirical_distribution(out.completion_ids), exact)
        assert tv <= expected_tv_bound(exact, N_SAMPLES), (method, tv)


def test_plain_and_greedy_stop_at_stop_strings(random_model, tokenizer):
    """Plain answers with "c" as a stop string follow p over answers ended by <eos>, "c" or the horizon (enumerated
    with both as end tokens, chi-square); greedy returns the argmax path (computed here without the samplers)."""
    leaves, _ = exact_sequence_logprobs(random_model, None, [4], T, eos_ids=[0, 3])
    common = dict(alpha=2.0, max_new_tokens=T, stop_strings=["c"], seed=3)
    plain = PowerSampler(random_model, tokenizer, PowerSamplingConfig("plain", num_samples_per_prompt=N_SAMPLES,
                                                                      batch_size=N_SAMPLES, **common))  # fmt: skip
    out = plain.sample([[4]])
    assert chi_square(out.completion_ids, {k: float(np.exp(v)) for k, v in leaves.items()})[2] > LEVEL
    greedy = PowerSampler(
        random_model, tokenizer, PowerSamplingConfig("greedy", num_samples_per_prompt=4, **common)
    )
    path = []
    with torch.no_grad():
        while len(path) < T and not (path and path[-1] in (0, 3)):
            path.append(int(random_model(input_ids=torch.tensor([[4, *path]])).logits[0, -1].argmax()))
    assert greedy.sample([[4]]).completion_ids == [path] * 4


def test_most_answers_unfinished_warns(random_model, tokenizer):
    """A batch in which most answers are cut at max_new_tokens warns and says what to set (at 1 token, about 80% of
    this model's plain answers are cut); a stop string that every answer reaches silences it."""
    cfg = PowerSamplingConfig("plain", max_new_tokens=1, num_samples_per_prompt=50)
    with pytest.warns(UserWarning, match=r"of 50 answers did not finish.*stop_strings"):
        PowerSampler(random_model, tokenizer, cfg).sample([[4]])
    every = PowerSamplingConfig(
        "plain", max_new_tokens=1, num_samples_per_prompt=50, stop_strings=["a", "b", "c", "q"]
    )
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert all(PowerSampler(random_model, tokenizer, every).sample([[4]]).finished)
    with pytest.raises(ValueError, match="No token of the tokenizer contains the stop string 'z'"):
        PowerSampler(random_model, tokenizer, PowerSamplingConfig(stop_strings=["z"]))


def test_the_targets_differ(random_model):
    """Cut answers hold most of the truncated target's mass on this model (both targets are named for what they are)."""
    truncated = exact_power_distribution(random_model, None, [4], 4.0, T, finished_only=False)
    cut_mass = sum(m for k, m in truncated.items() if k[-1] != 0)
    assert cut_mass > 0.8
    finished = exact_power_distribution(random_model, None, [4], 4.0, T, finished_only=True)
    assert total_variation(truncated, finished) == pytest.approx(cut_mass, abs=1e-9)


@pytest.mark.parametrize("method", ["mh", "smc"])
def test_power_samplers_escape_the_trap(trap_model, method):
    alpha = 4.0
    exact = exact_power_distribution(trap_model, None, [4], alpha, T)
    settings = (
        dict(mcmc_steps=40, block_size=T, batch_size=750)
        if method == "mh"
        else dict(num_particles=32, batch_size=8192)
    )
    out = _sample(trap_model, method, alpha, True, **settings)
    tv = total_variation(empirical_distribution(out.completion_ids), exact)
    assert tv <= expected_tv_bound(exact, N_SAMPLES), (method, tv)


def test_low_temperature_is_not_the_power_distribution(trap_model, tokenizer):
    """Theorem 1 made concrete. On the trap p(a)=0.6 with 16 weak continuations vs p(b)=0.4 with one strong
    one (prob ~0.9): p_4 puts ~(0.36^4)/(0.36^4 + 16 (0.6/16)^4) > 0.99 on "b c <eos>", while
    softmax(4 * logits) picks b first with ~0.4^4/(0.4^4+0.6^4) ≈ 0.16, so TV(q_low, p_4) >= 0.99 - 0.16 - slack.
    Both distributions are computed exactly (q_low(y) = prod_t softmax(alpha * logits_t)[y_t])."""
    alpha = 4.0
    exact = exact_power_distribution(trap_model, None, [4], alpha, T, finished_only=False)
    comps = all_completions(5, 0, T)
    log_q = sequence_logprobs(trap_model, [[4]] * len(comps), [list(c) for c in comps], temperature=1 / alpha)
    q_low = dict(zip(comps, log_q.exp().tolist()))
    assert sum(q_low.values()) == pytest.approx(1.0, abs=1e-4)
    assert exact[(2, 3, 0)] > 0.99
    assert total_variation(q_low, exact) > 0.7
    # and the sampler draws from q_low: its samples are as far away, within sampling error
    cfg = PowerSamplingConfig(
        method="low_temperature", alpha=alpha, max_new_tokens=T, num_samples_per_prompt=2000
    )
    out = PowerSampler(trap_model, tokenizer, cfg).sample([[4]])
    emp = empirical_distribution(out.completion_ids)
    assert total_variation(emp, q_low) <= expected_tv_bound(q_low, 2000)
    assert total_variation(emp, exact) > 0.7 - expected_tv_bound(q_low, 2000)


def test_sir_weighted_set_is_consistent_with_the_reference_proposal(random_model):
    """With the reference's proposal (tau = 1/alpha = 0.25, `proposal_temperature=None`) a large weighted particle set
    still matches p_4.
    Weighted TV error ~ 1/2 sum_y sqrt(p(y) E_q[w^2 | y]/N); we bound it by the iid bound scaled by
    sqrt(N / ESS) (ESS = effective sample size of the weights)."""
    alpha, N = 4.0, 20000
    exact = exact_power_distribution(random_model, None, [4], alpha, T, finished_only=False)
    cfg = PowerSamplingConfig(
        method="sir",
        alpha=alpha,
        max_new_tokens=T,
        num_particles=N,
        return_all_particles=True,
        batch_size=1,
        finished_only=False,
        proposal_temperature=None,
    )
    out = PowerSampler(random_model, None, cfg).sample([[4]])
    assert out.weights is not None and sum(out.weights) == pytest.approx(1.0)
    ess = out.stats["mean_ess"]
    tv = total_variation(empirical_distribution(out.completion_ids, out.weights), exact)
    assert tv <= expected_tv_bound(exact, int(ess))


# ----- lookahead (approximate by design) ------------------------------------------------------------------------------


def test_jackknife_removes_the_first_order_bias_of_a_log_mean():
    """log of the mean of M = 4 lognormal(0, 1) draws underestimates log E[x] = 1/2 by ~(e - 1)/(2M) = 0.21 (delta
    method); the jackknife's bias is O(1/M^2). Over 40000 replications (standard error ~0.005) the jackknifed mean is
    within 0.06 of 1/2 while the plain one is more than 0.15 below."""
    from trl_power.sampling.lookahead import jackknife_log_mean

    rng = np.random.default_rng(0)
    logs = rng.normal(0.0, 1.0, size=(40000, 4))
    plain = np.log(np.exp(logs).mean(1))
    jack = np.array([jackknife_log_mean(row) for row in logs])
    assert plain.mean() < 0.5 - 0.15
    assert abs(jack.mean() - 0.5) < 0.06
    assert jackknife_log_mean(np.array([-np.inf, -np.inf])) == -np.inf
    assert jackknife_log_mean(np.array([0.3])) == pytest.approx(0.3)


def test_lookahead_with_every_candidate_and_long_rollouts_is_near_exact(random_model, trap_model):
    """With every token a candidate (K = vocab) and rollouts reaching max_new_tokens only the finite-M noise of zeta_hat
    is left (bias O(1/M^2) after the jackknife): on the random model (alpha 2, truncated target, M = 32) the output law
    is within the iid bound of p_alpha (n = 1000, level 1e-3; the bound is 0.12 there, and the per-token power p^alpha
    without zeta, low temperature, is at 0.20: a weak check on its own). On the trap model (alpha 4, finished target,
    M = 4) zeta is what finds the strong answer: the lookahead is within the bound (0.06), low temperature at 0.8."""
    n = 1000
    for model, alpha, finished_only, M in ((random_model, 2.0, False, 32), (trap_model, 4.0, True, 4)):
        exact = exact_power_distribution(model, None, [4], alpha, T, finished_only=finished_only)
        out = _sample(
            model,
            "lookahead",
            alpha,
            finished_only,
            n=n,
            lookahead_candidates=5,
            lookahead_rollouts=M,
            lookahead_horizon=T,
            batch_size=n * 5 * M,
        )
        bound = expected_tv_bound(exact, n)
        assert total_variation(empirical_distribution(out.completion_ids), exact) <= bound
    low = PowerSampler(
        trap_model,
        None,
        PowerSamplingConfig(method="low_temperature", alpha=4.0, max_new_tokens=T, num_samples_per_prompt=n),
    ).sample([[4]])
    assert total_variation(empirical_distribution(low.completion_ids), exact) > 0.5 + bound
