"""Exactness at length: SMC, SIR and MH against the closed-form p^alpha of a Markov model at 64-256 new tokens.

The model (`trl_power.tiny_models.markov_model(two_cycle_logits())`) is a one-layer Llama whose next token depends on
the current token alone: two cycles of words with rare EOS, answers of ~100 tokens under p and of 18 (64 new tokens)
to 28 (256) under p^4, split between the cycles. Its p^alpha at any horizon follows by dynamic programming
(`markov_power_law`), and exact draws from it by the backward masses (`markov_power_samples`).

- SMC and SIR: what their weighted particles estimate is exact for any number of particles N: E[Ẑ sum_i w_i f(y_i)]
  = sum_y p(y)^alpha f(y) (the resampling keeps the unnormalised measure unbiased). Checked with Hotelling's T^2 on the
  cells (first token) x (length at most / beyond p^alpha's median) (+ cut answers), at level 1e-3. The single answer
  a run returns is only consistent (bias O(1/N)): measured, not asserted (benchmarks/length.py, BENCHMARKS.md §12).
- MH: its kernel leaves p^alpha invariant: chains started at exact draws of p^alpha (`sample_mh(initial=...)`) must
  still have p^alpha's law after k steps, whatever the chain's mixing time (measured, not tested:
  benchmarks/mh_mixing.py). Chi-square on the first two tokens and on the length bins at level 1e-3.
The power of each check is stated with it (the wrong variants were run against these tests on 2026-12-07).
"""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch
from exact_laws import chi_square
from scipy import stats
from test_sampling_exactness import _hotelling_pvalue

from trl_power import PowerSampler, PowerSamplingConfig, exact_power_distribution
from trl_power.sampling.engine import make_engine
from trl_power.sampling.mh import sample_mh
from trl_power.seeding import chain_generator
from trl_power.tiny_models import (
    markov_log_transitions,
    markov_model,
    markov_power_law,
    markov_power_samples,
    ring_logits,
    two_cycle_logits,
)

LEVEL = 1e-3
PROMPT = 9  # the prompt token of two_cycle_logits
ALPHA = 4.0


@pytest.fixture(scope="module")
def markov():
    model = markov_model(two_cycle_logits())
    return model, markov_log_transitions(model)


def test_the_markov_model_and_its_exact_laws(markov):
    """The model is Markov (the logits at every position of a 300-token sequence are its table's row of the current
    token); the dynamic programme equals enumeration at 4 tokens (both targets, alpha 4 and 0.5); the exact sampler
    has the programme's law (chi-square, 3000 draws: against a sampler that ignores the backward masses, which draws
    low temperature's first token 0.92 of the time instead of p^4's 0.55, its power is ~1)."""
    model, log_p = markov
    seq = torch.randint(1, 9, (1, 300), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        logits = torch.log_softmax(model(input_ids=seq).logits[0].double(), -1)
    torch.testing.assert_close(logits, log_p[seq[0]], atol=1e-6, rtol=0)
    for finished_only in (True, False):
        for alpha in (4.0, 0.5):
            law = markov_power_law(log_p, PROMPT, alpha, 4, finished_only=finished_only)
            enumerated = exact_power_distribution(
                model, None, [PROMPT], alpha, 4, finished_only=finished_only
            )
            lengths: dict = {}
            for y, q in enumerated.items():
                key = (len(y), int(y[-1] == 0))
                lengths[key] = lengths.get(key, 0.0) + q
            for key in set(lengths) | set(law["length"]):
                assert abs(lengths.get(key, 0.0) - law["length"].get(key, 0.0)) < 1e-5, (
                    key,
                    finished_only,
                    alpha,
                )
    law = markov_power_law(log_p, PROMPT, ALPHA, 64)
    draws = markov_power_samples(log_p, PROMPT, ALPHA, 64, 3000, seed=0)
    assert chi_square([y[:2] for y in draws], law["prefix"])[2] > LEVEL
    assert chi_square([(len(y), 1) for y in draws], law["length"])[2] > LEVEL


def test_the_ring_model_law_is_its_docstring_binomial():
    """`ring_logits(K)` (benchmarks/length.py --model ring compares samplers to it): under p^4 within K + 8 tokens the
    answers are the one-lap ones (K words and EOS) and the positions are independent with a_k at q = 0.6^4 / (0.6^4 +
    0.4^4): the exact programme's length law puts mass 1 on K + 1 tokens and its first-two-token law is the product, at
    K = 16 and 64 (exact draws: the b-count's law is Binomial(K, 1 - q), chi-square). With impossible transitions at
    log 1e-12 (the first version) p^4 at K = 64 put 0.74 on the bare EOS through them (audit): this fails there."""
    q = 0.6**4 / (0.6**4 + 0.4**4)
    for K in (16, 64):
        V = 2 * K + 2
        log_p = ring_logits(K)
        law = markov_power_law(log_p, V - 1, ALPHA, K + 8)
        assert law["length"].get((K + 1, 1), 0.0) > 1 - 1e-9
        expected = {(1, 3): q * q, (1, 4): q * (1 - q), (2, 3): (1 - q) * q, (2, 4): (1 - q) ** 2}
        for key, mass in expected.items():
            assert abs(law["prefix"].get(key, 0.0) - mass) < 1e-9
    draws = markov_power_samples(ring_logits(16), 33, ALPHA, 24, 400, seed=0)
    assert all(len(y) == 17 and y[-1] == 0 for y in draws)
    counts = np.bincount([sum(t % 2 == 0 for t in y[:-1]) for y in draws], minlength=17)
    expected = stats.binom.pmf(np.arange(17), 16, 1 - q) * len(draws)
    keep = expected > 5  # chi-square cells with enough mass; the rest pooled
    observed = np.append(counts[keep], counts[~keep].sum())
    expected = np.append(expected[keep], expected[~keep].sum())
    assert stats.chisquare(observed, expected).pvalue > LEVEL


def length_cells(law: dict) -> int:
    """The median length of p^alpha's finished answers (the cells split there)."""
    finished = sorted((n, q) for (n, f), q in law["length"].items() if f)
    total, cdf = sum(q for _, q in finished), 0.0
    for n, q in finished:
        cdf += q
        if cdf >= total / 2:
            return n
    raise ValueError("no finished answer")


def cell_of(y: list[int], median: int) -> int:
    """Cells: first token 1 (cycle a) or 5 (cycle b), each split at the median length; any other first token; cut."""
    if not (y and y[-1] == 0):
        return 5  # cut at max_new_tokens
    if y[0] not in (1, 5):
        return 4  # any other first token: mostly the answer [EOS] alone (13.6% of p^4 at 64 tokens)
    return 2 * (y[0] == 5) + int(len(y) > median)


def exact_cell_masses(log_p, H: int, finished_only: bool, median: int, alpha: float) -> np.ndarray:
    """sum_y p(y)^alpha over each cell, by the programme with the first token fixed (the prompt's row restricted)."""
    masses = np.zeros(6)
    law = markov_power_law(log_p, PROMPT, alpha, H, finished_only=finished_only)
    total = np.exp(law["log_z"])
    for first in (1, 5, None):
        keep = torch.zeros(log_p.shape[0], dtype=torch.bool)
        keep[[1, 5] if first is None else first] = True
        if first is None:
            keep = ~keep
        restricted = log_p.clone()  # the prompt's row cut to the first token(s) of the cell, not renormalised
        restricted[PROMPT] = torch.where(keep, log_p[PROMPT], torch.tensor(-1e4, dtype=torch.float64))
        part = markov_power_law(restricted, PROMPT, alpha, H, finished_only=finished_only)
        mass = np.exp(part["log_z"])
        for (n, f), q in part["length"].items():
            y = [first or 2] + [1] * (n - 2) + [0] * f if n > 1 else ([0] if f else [first or 2])
            masses[cell_of(y, median)] += mass * q
    assert abs(masses.sum() - total) < 1e-6 * total
    return masses


@pytest.mark.parametrize(
    "method, horizon, finished_only, alpha, ess_threshold",
    [
        ("smc", 64, True, 4.0, 1.0),
        ("smc", 64, False, 1.5, 0.5),
        ("sir", 64, True, 4.0, 0.5),
        ("smc", 256, True, 4.0, 0.5),
    ],
)
def test_weighted_particles_are_unbiased_at_length(
    markov, method, horizon, finished_only, alpha, ess_threshold
):
    """E[Ẑ sum_i w_i 1{y_i in cell}] = the cell's mass of p^alpha, for every cell, at 64 and 256 new tokens (tau 1,
    N = 8; SMC resampling at ESS < N/2 as by default, or at every token), and no weight on cut answers under the
    finished-only target. Power (audited on 2026-12-07): Ẑ / Z has standard deviation ~1.0 (resampling at ESS < N/2)
    to ~1.5 (at every token) at N = 8 and 64 tokens, so over 300 runs a bias of 30-50% in one cell is caught with 80%
    power; the wrong variants run on 2026-12-07 move it by far more: the exponent alpha - 1 in SMC's increments,
    resampled particles keeping their own weights (at every-token resampling) and cut particles kept under the
    finished-only target are each caught (p < 1e-6 / an assertion)."""
    model, log_p = markov
    runs, particles = (300, 8) if horizon <= 64 else (150, 8)
    config = PowerSamplingConfig(
        method=method, alpha=alpha, max_new_tokens=horizon, num_particles=particles, num_samples_per_prompt=runs,
        return_all_particles=True, finished_only=finished_only, batch_size=4096, seed=3, ess_threshold=ess_threshold,
    )  # fmt: skip
    out = PowerSampler(model, None, config).sample([[PROMPT]])
    assert_particles_unbiased(out, log_p, alpha, horizon, finished_only, particles)


def assert_particles_unbiased(
    out, log_p, alpha: float, horizon: int, finished_only: bool, particles: int
) -> None:
    """phi[r, cell] = Ẑ_r sum_i w_ri 1{y_ri in cell} against the cells' exact masses; under the finished-only target
    no weight on cut answers. Hotelling's T^2 on cells 0-3 (first token 1 or 5, by length); cell 4 apart: its mass is almost all the answer
    [EOS], which every particle drawing EOS first carries with the same weight p(EOS | prompt)^(alpha - 1) / N (tau
    1, never resampled once complete), so its estimate is a Binomial(runs * N, p(EOS | prompt)) count: tested
    exactly (the other first tokens of cell 4 hold < 0.1% of its mass). Cut answers (cell 5) join the Hotelling cells
    over every answer."""
    law = markov_power_law(log_p, PROMPT, alpha, horizon, finished_only=finished_only)
    median = length_cells(law)
    gamma = exact_cell_masses(log_p, horizon, finished_only, median, alpha)
    runs = len(out.log_z)
    z = np.exp(np.array(out.log_z))
    w = np.array(out.weights).reshape(runs, particles)
    phi = np.zeros((runs, 6))
    for k, y in enumerate(out.completion_ids):
        phi[k // particles, cell_of(y, median)] += z[k // particles] * w[k // particles, k % particles]
    if finished_only:  # a cut answer carries no weight (p^alpha over finished answers)
        assert not phi[:, 5].any(), phi[:, 5].max()
    cells = [0, 1, 2, 3] + ([] if finished_only else [5])
    pvalue = _hotelling_pvalue(phi[:, cells], gamma[cells], (phi[:, cells] > 0).sum(0), min_runs=20)
    assert pvalue > LEVEL, (pvalue, phi.mean(0)[cells], gamma[cells])
    p_eos = float(log_p[PROMPT, 0].exp())
    eos_first = sum(y == [0] for y in out.completion_ids)
    assert stats.binomtest(eos_first, len(out.completion_ids), p_eos).pvalue > LEVEL, (eos_first, p_eos)


@pytest.mark.parametrize("horizon, finished_only, alpha", [(64, True, 4.0), (64, False, 1.5)])
def test_mh_kernel_keeps_p_alpha_at_length(markov, horizon, finished_only, alpha, chains=300, steps=10):
    """Chains started at exact draws of p^4 (64 new tokens, one block, tau 1) still have p^4's law after 10 steps
    (about 190 of 300 chains move at the finished-only target). Power, run on 2026-12-07: the acceptance without its
    cut-point correction log(L / L') (the term that grows with the answer's length) is caught at the finished-only
    target, the exponent alpha - 1 at alpha 1.5 over every answer; the exponent and the proposal correction at the
    finished-only target move the law too slowly to be seen in 10 (or 30) steps: the short exact-kernel tests catch
    those (tests/test_sampling_exactness.py, tests/test_mutations.py)."""
    model, log_p = markov
    law = markov_power_law(log_p, PROMPT, alpha, horizon, finished_only=finished_only)
    start = markov_power_samples(log_p, PROMPT, alpha, horizon, chains, seed=1, finished_only=finished_only)
    config = PowerSamplingConfig(
        method="mh", alpha=alpha, max_new_tokens=horizon, block_size=horizon, mcmc_steps=steps,
        finished_only=finished_only,
    )  # fmt: skip
    stats_: dict = {}
    generators = [chain_generator(0, 0, j) for j in range(chains)]
    results = sample_mh(make_engine(model, None), [[PROMPT]], [0] * chains, generators, config, stats_, start)
    answers = [r[0][0] for r in results]
    moved = sum(a != s for a, s in zip(answers, start))
    # the chains move (the check is not of the starting draws): ~190 of 300 at the finished-only target; ~25 at
    # alpha 1.5 over every answer, whose p^alpha is 96% answers cut along one cycle (a proposal mostly redraws them)
    assert moved > chains // 20, moved
    assert chi_square([y[:2] for y in answers], law["prefix"])[2] > LEVEL
    lengths = [(len(y), int(bool(y) and y[-1] == 0)) for y in answers]
    assert chi_square(lengths, law["length"])[2] > LEVEL


def test_reorder_moves_rows_as_select_does():
    """`TransformersRows.reorder` (SMC's in-place resampling) leaves each row with the keys/values `select` would give
    it, the in-place path taken (a cache exists), repeats and a row overwritten by another in the same call included:
    the live slots' keys/values and the next-token logits agree. On a model with attention (the Markov model's writes
    nothing, so misplaced keys would not show). A reorder that moved tokens but not keys fails both."""
    from trl_power.sampling.engine import RunRandom
    from trl_power.tiny_models import build_model

    model = build_model(10, seed=3, initializer_range=0.25, eos_token_id=0)
    engine = make_engine(model, None)
    engine.eos_ids = []  # no row finishes, so decode returns the state that advanced (with its cache)
    rows = engine.start([[5, 6], [7, 8, 9]], [0, 1, 0, 1])
    rng = RunRandom([torch.Generator().manual_seed(k) for k in range(4)], range(4))
    rows = engine.extend(rows, rng, [4, 4, 4, 4], 1.0, None, None).rows
    assert rows.state._cache is not None
    order = [3, 3, 0, 2]
    selected = rows.select(order)
    reordered = rows.reorder(order)
    assert reordered.state._cache is not None and reordered.tokens == selected.tokens
    for (k_sel, v_sel), (k_re, v_re) in zip(selected.state.kv, reordered.state.kv):
        for b in range(4):
            live_sel, live_re = selected.state.mask[b], reordered.state.mask[b]
            torch.testing.assert_close(k_sel[b][:, live_sel], k_re[b][:, live_re])
            torch.testing.assert_close(v_sel[b][:, live_sel], v_re[b][:, live_re])
    torch.testing.assert_close(selected.state.advance(model), reordered.state.advance(model))


@pytest.mark.parametrize("inplace", [False, True])
def test_replace_rows_gives_each_row_its_state_and_copies_unless_in_place(inplace):
    """`DecodeState.replace_rows` (MH's accepted proposals, decode's finished rows): the replaced rows carry the other
    state's keys/values/position/pending token, the others keep theirs, across a width change (the other state is
    wider, so this one is padded); without `inplace` the original state is left exactly as it was (its mask, positions,
    pending and keys). Fails if padding's shared positions/pending were written through (the source state's positions
    change) or if the kept rows lost their keys."""
    from trl_power.sampling.engine import RunRandom
    from trl_power.tiny_models import build_model

    model = build_model(10, seed=3, initializer_range=0.25, eos_token_id=0)
    engine = make_engine(model, None)
    engine.eos_ids = []
    rng = RunRandom([torch.Generator().manual_seed(k) for k in range(3)], range(3))
    base = engine.extend(
        engine.start([[5, 6], [7, 8, 9], [4]], [0, 1, 2]), rng, [2, 2, 2], 1.0, None, None
    ).rows
    other = engine.extend(base.select([2, 0]), rng, [5, 5], 1.0, None, None).rows  # wider than base
    keep = base.select([0, 1, 2]).state  # a copy of base's rows, to compare against
    before = [
        x.clone() for x in (base.state.mask, base.state.positions, base.state.pending, base.state.kv[0][0])
    ]
    new = base.state.replace_rows(torch.tensor([0, 2]), other.state, inplace=inplace)
    assert new.positions.tolist() == [other.state.positions[0], keep.positions[1], other.state.positions[1]]
    assert new.pending.tolist() == [other.state.pending[0], keep.pending[1], other.state.pending[1]]
    for state, src, b in ((other.state, 0, 0), (keep, 1, 1), (other.state, 1, 2)):
        torch.testing.assert_close(new.kv[0][0][b][:, new.mask[b]], state.kv[0][0][src][:, state.mask[src]])
        torch.testing.assert_close(new.kv[-1][1][b][:, new.mask[b]], state.kv[-1][1][src][:, state.mask[src]])
    if not inplace:
        after = (base.state.mask, base.state.positions, base.state.pending, base.state.kv[0][0])
        for x, y in zip(before, after):
            assert torch.equal(x, y)


@pytest.mark.parametrize("method", ["smc", "sir", "mh"])
def test_runs_cut_by_the_horizon_say_so_and_name_max_new_tokens(markov, method):
    """At 8 new tokens most proposals of this model run past the horizon (under p answers run ~100 tokens): SMC/SIR
    record how many particles per run finished (`finished_particles`, 0.4 of 8 here), MH the share of its proposals
    rejected for ending cut (`cut_proposal_rate`, 0.97), and the warning names max_new_tokens, not the proposal
    temperature (which would make EOS rarer still: at tau 1/alpha no particle finishes within 64 tokens,
    benchmarks/length.py). At 64 tokens and over every answer (finished_only=False) there is no such warning."""
    model, _ = markov
    settings = {"mh": dict(block_size=8, mcmc_steps=10)}.get(method, dict(num_particles=8))
    config = PowerSamplingConfig(
        method=method, alpha=ALPHA, max_new_tokens=8, num_samples_per_prompt=20, **settings
    )
    with pytest.warns(UserWarning, match=f"{method}: .*max_new_tokens=8.* Raise max_new_tokens"):
        out = PowerSampler(model, None, config).sample([[PROMPT]])
    if method == "mh":
        assert out.stats["cut_proposal_rate"] > 0.5
    else:
        assert out.stats["finished_particles"] < 0.25 * 8

    config = PowerSamplingConfig(
        method=method,
        alpha=ALPHA,
        max_new_tokens=8,
        num_samples_per_prompt=20,
        finished_only=False,
        **settings,
    )
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        PowerSampler(model, None, config).sample([[PROMPT]])
    assert not [w for w in caught if "Raise max_new_tokens (or set stop_strings)" in str(w.message)]
