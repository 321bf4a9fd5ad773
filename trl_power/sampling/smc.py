"""Sequential Monte Carlo power sampling (Power-SMC, Azizi et al. 2026).

N particles per run, proposal q ∝ p^(1/tau) (tau = `proposal_temperature`). The intermediate target after t tokens is
gamma_t(y_{1:t}) = p(y_{1:t})^alpha, so each new token multiplies a live particle's weight by

    p(y_t | y_<t)^alpha / q(y_t | y_<t)      (for tau = 1/alpha: the local normaliser sum_v p(v | y_<t)^alpha);

a particle that has emitted EOS is complete and is never resampled. With `anneal_tokens` = A > 0 the intermediate
targets are tempered, gamma_t = p(y_{1:t})^{alpha_t} with alpha_t = 1 + (alpha - 1) min(1, t/A) (Power-SMC), so a step
multiplies the weight by p(y_{1:t'})^{alpha_t'} / (p(y_{1:t})^{alpha_t} q(new tokens)), complete particles included
(their exponent moves too), and the final target is p^alpha exactly. The particles
advance `resample_interval` tokens between resampling checks (1: after every token; Power-SMC checks every
64-128; unset: the engine's `resample_interval`); their weights then carry the product over those tokens, so the
targets stay exact. When the m
particles still decoding have ESS = (sum w)^2 / sum w^2 < ess_threshold * m, those m are resampled
systematically among themselves (the KV-cache rows follow them, a memory move) and each gets their mean weight:
the alive part of the weighted particle measure is preserved in expectation, so Ẑ = mean of the final weights
stays an unbiased estimate of Z_alpha = sum_y p(y)^alpha and complete answers are never lost to resampling
(the decoding budget goes to the alive particles only). The final target is p^alpha: over every answer (`finished_only=False`,
the power of p truncated at max_new_tokens), or over finished answers, a particle still without EOS at
max_new_tokens then getting weight 0. At the end one completion is drawn from the weighted set, or the whole
set is returned with its normalised weights.
"""

from __future__ import annotations

import numpy as np

from trl_power.sampling.config import PowerSamplingConfig
from trl_power.sampling.engine import Engine, RunRandom
from trl_power.sampling.sir import resample_index, run_weights
from trl_power.theory import effective_sample_size, log_mean_exp


def systematic_resample(weights: np.ndarray, u: float) -> np.ndarray:
    """Indices a_k = min{j: cumsum(w)_j > (u + k)/N}, k = 0..N-1 (one uniform u ∈ [0,1))."""
    N = len(weights)
    points = (u + np.arange(N)) / N
    return np.minimum(np.searchsorted(np.cumsum(weights), points, side="right"), N - 1)


def annealed_alpha(alpha: float, tokens: int, anneal_tokens: int) -> float:
    """The exponent of the intermediate target after `tokens` tokens: 1 + (alpha - 1) min(1, tokens / anneal_tokens)
    (alpha throughout when anneal_tokens = 0)."""
    if anneal_tokens <= 0:
        return alpha
    return 1.0 + (alpha - 1.0) * min(1.0, tokens / anneal_tokens)


def update_log_weights(
    logw: np.ndarray,
    alpha_now: float,
    alpha_prev: float,
    logp_now: np.ndarray,
    logp_prev: np.ndarray,
    logq_new: np.ndarray,
) -> np.ndarray:
    """From gamma_prev = p(y_prefix)^alpha_prev to gamma_now = p(y_prefix')^alpha_now over a step that drew the new
    tokens from q: log w += alpha_now * log p(prefix') - alpha_prev * log p(prefix) - log q(new tokens). logp_*: the
    particles' cumulative sequence log p; a complete particle has logp_now = logp_prev and logq_new = 0, so only the
    change of exponent reaches it (nothing without annealing)."""
    return logw + alpha_now * logp_now - alpha_prev * logp_prev - logq_new


def still_decoding(live: np.ndarray, new_tokens: list[list[int]], eos_ids) -> np.ndarray:
    """The particles that continue: live ones whose new tokens did not end with EOS (a particle that emitted EOS is
    complete)."""
    eos = set(eos_ids)
    ended = np.array([bool(t) and t[-1] in eos for t in new_tokens])
    return live & ~ended


def alive_ess(
    logw: np.ndarray, alive: np.ndarray, runs: int, particles: int
) -> tuple[np.ndarray, np.ndarray]:
    """Per run (rows r*N .. r*N + N - 1): the ESS (sum w)^2 / sum w^2 of the weights of its particles still decoding
    (0 when none carries weight), and how many are still decoding."""
    lw = np.where(alive, logw, -np.inf).reshape(runs, particles)
    top = lw.max(1)
    w = np.zeros_like(lw)
    finite = np.isfinite(top)
    w[finite] = np.exp(lw[finite] - top[finite, None])
    return effective_sample_size(w, axis=1), alive.reshape(runs, particles).sum(1)


def resampled_log_weights(logw_alive: np.ndarray, ancestors: np.ndarray) -> np.ndarray:
    """After resampling a run's alive particles: each gets their mean weight (log-mean-exp of the old weights),
    which keeps the normalising-constant estimate; the ancestors' own weights are not carried over."""
    return np.full(len(ancestors), log_mean_exp(logw_alive))


def final_log_weights(logw: np.ndarray, finished: np.ndarray, finished_only: bool) -> np.ndarray:
    """The weights of the final target: p^alpha over every answer, or over finished answers (a particle cut at
    max_new_tokens gets weight 0)."""
    return np.where(finished, logw, -np.inf) if finished_only else logw


def sample_smc(engine: Engine, prompts, run_prompt, generators, config: PowerSamplingConfig, stats):
    R, N = len(run_prompt), config.num_particles
    H, interval = config.max_new_tokens, config.resample_interval or engine.resample_interval
    rows = engine.start(prompts, [p for p in run_prompt for _ in range(N)])
    rng = RunRandom(generators, [r for r in range(R) for _ in range(N)])
    toks: list[list[int]] = [[] for _ in range(R * N)]
    lps: list[list[float]] = [[] for _ in range(R * N)]
    logw = np.zeros(R * N)
    alive = np.ones(R * N, dtype=bool)
    logp_seq = np.zeros(R * N)  # cumulative log p of each particle
    # the particles the engine's rows hold, in order: every alive one, and complete ones until they are more than half
    # (then dropped in one move, so that complete particles cost no forward passes and no cache moves)
    ids = np.arange(R * N)
    sub_rng = rng  # the random streams of the rows in `ids` (each run's rows stay contiguous, in order)
    resamples, ess_sum, ess_count, generated = 0, 0.0, 0, 0
    alpha_prev = annealed_alpha(config.alpha, 0, config.anneal_tokens)
    while generated < H and alive.any():
        k = min(interval, H - generated)
        rows, sub_t, sub_p, sub_q, _ = engine.extend(
            rows,
            sub_rng,
            np.where(alive[ids], k, 0).tolist(),
            config.proposal_tau,
            config.top_k,
            config.top_p,
        )
        new_t: list[list[int]] = [[] for _ in range(R * N)]
        sum_p, sum_q = np.zeros(R * N), np.zeros(R * N)
        for j, i in enumerate(ids.tolist()):
            if sub_t[j]:
                new_t[i] = sub_t[j]
                toks[i] += sub_t[j]
                lps[i] += sub_p[j]
                sum_p[i], sum_q[i] = sum(sub_p[j]), sum(sub_q[j])
        logp_new = logp_seq + sum_p
        alpha_now = annealed_alpha(config.alpha, generated + k, config.anneal_tokens)
        logw = update_log_weights(logw, alpha_now, alpha_prev, logp_new, logp_seq, sum_q)
        logp_seq, alpha_prev = logp_new, alpha_now
        alive = still_decoding(alive, new_t, engine.eos_ids)
        generated += k
        if generated >= H:
            break  # nothing is decoded after the last token: no resampling
        # resample the alive particles of runs whose alive ESS fell below the threshold
        order = np.arange(R * N)
        ess, live = alive_ess(logw, alive, R, N)
        ess_sum += float(ess[live > 0].sum())
        ess_count += int((live > 0).sum())
        for r in np.flatnonzero((live > 0) & (ess < config.ess_threshold * live)):
            live_rows = r * N + np.flatnonzero(alive[r * N : (r + 1) * N])
            idx = systematic_resample(run_weights(logw[live_rows]), float(rng.run_uniform(int(r))))
            order[live_rows] = live_rows[idx]
            logw[live_rows] = resampled_log_weights(logw[live_rows], idx)
            resamples += 1
        moved = order != np.arange(R * N)
        if moved.any():
            position = np.zeros(R * N, dtype=np.int64)
            position[ids] = np.arange(len(ids))
            # ids hold every alive particle, and an alive particle's ancestor is alive: order[ids] lies in ids
            rows = rows.reorder(position[order[ids]].tolist())
            alive, logp_seq = alive[order], logp_seq[order]
            # a particle's token lists are extended in place: a resampled one gets its own copies
            toks = [list(toks[j]) if m else toks[j] for j, m in zip(order, moved)]
            lps = [list(lps[j]) if m else lps[j] for j, m in zip(order, moved)]
        if 2 * int((~alive[ids]).sum()) > len(ids):
            rows = rows.select(np.flatnonzero(alive[ids]).tolist())
            ids = ids[alive[ids]]
            sub_rng = RunRandom(generators, (ids // N).tolist())
    stats["resample_count"] = stats.get("resample_count", 0) + resamples
    stats["_ess_sum"] = stats.get("_ess_sum", 0.0) + ess_sum
    stats["_ess_count"] = stats.get("_ess_count", 0) + ess_count
    # the final target is p^alpha whatever the schedule reached (every answer stopped before anneal_tokens)
    logw = update_log_weights(logw, config.alpha, alpha_prev, logp_seq, logp_seq, np.zeros(R * N))
    eos_set = set(engine.eos_ids)
    finished = np.array([bool(t) and t[-1] in eos_set for t in toks])
    logw = final_log_weights(logw, finished, config.finished_only)
    results = []
    for r in range(R):
        sl = slice(r * N, (r + 1) * N)
        w = run_weights(logw[sl])
        stats.setdefault("finished_particles", []).append(int(finished[sl].sum()))
        stats.setdefault("log_z", []).append(log_mean_exp(logw[sl]))
        stats.setdefault("final_ess", []).append(effective_sample_size(w))
        if config.return_all_particles:
            results.append([(toks[i], sum(lps[i]), float(w[i - r * N])) for i in range(r * N, (r + 1) * N)])
        else:
            k = resample_index(w, float(rng.run_uniform(r)))
            results.append([(toks[r * N + k], sum(lps[r * N + k]), None)])
    return results
