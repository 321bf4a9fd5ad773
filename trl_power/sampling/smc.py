"""Sequential Monte Carlo power sampling (Power-SMC, Azizi et al. 2026).

N particles per run, proposal q ∝ p^(1/tau) (default tau = 1/alpha). The intermediate target after t tokens is
gamma_t(y_{1:t}) = p(y_{1:t})^alpha, so each new token multiplies a live particle's weight by

    p(y_t | y_<t)^alpha / q(y_t | y_<t)      (for tau = 1/alpha: the local normaliser sum_v p(v | y_<t)^alpha);

a particle that has emitted EOS is complete: its weight stays as it is and it is never resampled. When the m
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
import torch

from trl_power.sampling.config import PowerSamplingConfig
from trl_power.sampling.engine import RunRandom, TokenCounter, prefill, sample_step
from trl_power.sampling.sir import resample_index, run_weights
from trl_power.theory import log_mean_exp


def systematic_resample(weights: np.ndarray, u: float) -> np.ndarray:
    """Indices a_k = min{j: cumsum(w)_j > (u + k)/N}, k = 0..N-1 (one uniform u ∈ [0,1))."""
    N = len(weights)
    points = (u + np.arange(N)) / N
    return np.minimum(np.searchsorted(np.cumsum(weights), points, side="right"), N - 1)


def update_log_weights(
    logw: np.ndarray, alpha: float, logp: np.ndarray, logq: np.ndarray, live: np.ndarray
) -> np.ndarray:
    """log w_t = log w_{t-1} + alpha * log p(y_t) - log q(y_t) for the particles that drew a token (`live`);
    complete particles keep their weight."""
    return logw + np.where(live, alpha * logp - logq, 0.0)


def resampled_log_weights(logw_alive: np.ndarray, ancestors: np.ndarray) -> np.ndarray:
    """After resampling a run's alive particles: each gets their mean weight (log-mean-exp of the old weights),
    which keeps the normalising-constant estimate; the ancestors' own weights are not carried over."""
    return np.full(len(ancestors), log_mean_exp(logw_alive))


def final_log_weights(logw: np.ndarray, finished: np.ndarray, finished_only: bool) -> np.ndarray:
    """The weights of the final target: p^alpha over every answer, or over finished answers (a particle cut at
    max_new_tokens gets weight 0)."""
    return np.where(finished, logw, -np.inf) if finished_only else logw


def sample_smc(
    model, prompts, run_prompt, generators, config: PowerSamplingConfig, eos_ids, counter: TokenCounter, stats
):
    R, N = len(run_prompt), config.num_particles
    device = next(model.parameters()).device
    rows_prompt = [p for p in run_prompt for _ in range(N)]
    state = prefill(model, prompts, rows_prompt, counter)
    rng = RunRandom(generators, [r for r in range(R) for _ in range(N)])
    eos = torch.as_tensor(list(eos_ids), device=device)
    toks = [[] for _ in range(R * N)]
    lps = [[] for _ in range(R * N)]
    logw = np.zeros(R * N)
    alive = torch.ones(R * N, dtype=torch.bool, device=device)
    resamples, ess_sum, ess_count = 0, 0.0, 0
    for step in range(config.max_new_tokens):
        if not bool(alive.any()):
            break
        token, lp_t, lq_t = sample_step(
            model, state, alive, rng, config.proposal_tau, config.top_k, config.top_p, counter
        )
        live = alive.cpu().numpy()
        lp_np = lp_t.double().cpu().numpy()
        logw = update_log_weights(logw, config.alpha, lp_np, lq_t.double().cpu().numpy(), live)
        tk = token.tolist()
        for i in np.flatnonzero(live):
            toks[i].append(tk[i])
            lps[i].append(float(lp_np[i]))
        alive = alive & ~torch.isin(token, eos)
        if step == config.max_new_tokens - 1:
            break  # nothing is decoded after the last token: no resampling
        # resample the alive particles of runs whose alive ESS fell below the threshold
        order = np.arange(R * N)
        alive_np = alive.cpu().numpy()
        for r in range(R):
            rows = r * N + np.flatnonzero(alive_np[r * N : (r + 1) * N])
            if len(rows) == 0:
                continue
            w = run_weights(logw[rows])
            ess = 1.0 / (w**2).sum()
            ess_sum += ess
            ess_count += 1
            if ess < config.ess_threshold * len(rows):
                idx = systematic_resample(w, float(rng.run_uniform(r)))
                order[rows] = rows[idx]
                logw[rows] = resampled_log_weights(logw[rows], idx)
                resamples += 1
        if not np.array_equal(order, np.arange(R * N)):
            sel = torch.as_tensor(order, device=device)
            state = state.select(sel)
            alive = alive[sel]
            toks = [list(toks[j]) for j in order]
            lps = [list(lps[j]) for j in order]
    stats["resample_count"] = stats.get("resample_count", 0) + resamples
    stats["_ess_sum"] = stats.get("_ess_sum", 0.0) + ess_sum
    stats["_ess_count"] = stats.get("_ess_count", 0) + ess_count
    eos_set = set(eos_ids)
    finished = np.array([bool(t) and t[-1] in eos_set for t in toks])
    logw = final_log_weights(logw, finished, config.finished_only)
    results = []
    for r in range(R):
        sl = slice(r * N, (r + 1) * N)
        w = run_weights(logw[sl])
        stats.setdefault("log_z", []).append(log_mean_exp(logw[sl]))
        rows = range(r * N, (r + 1) * N)
        if config.return_all_particles:
            results.append([(toks[i], sum(lps[i]), float(w[i - r * N])) for i in rows])
        else:
            k = resample_index(w, float(rng.run_uniform(r)))
            results.append([(toks[r * N + k], sum(lps[r * N + k]), None)])
    return results
