"""Sampling-importance-resampling (best-of-N with the right weights).

Draw N completions y^(n) ~ q (proposal temperature tau, `proposal_temperature`), weight
w_n ∝ p(y^(n))^alpha / q(y^(n)) = exp(alpha * sum_t log p - sum_t log q) (times 1{y ends with EOS} for the
finished-only target), self-normalise, resample one. Exact as N → ∞; the weighted set itself is a consistent
estimate of p_alpha, and the mean unnormalised weight Ẑ an unbiased estimate of Z_alpha = sum_y p(y)^alpha.
"""

from __future__ import annotations

import numpy as np

from trl_power.sampling.config import PowerSamplingConfig
from trl_power.sampling.engine import Engine, RunRandom
from trl_power.theory import effective_sample_size, log_mean_exp, normalise_log_weights


def importance_log_weights(
    alpha: float, logp: np.ndarray, logq: np.ndarray, finished: np.ndarray, finished_only: bool
) -> np.ndarray:
    """log w = alpha * log p(y) - log q(y) per completion (sequence sums); -inf for a cut answer when the
    target is p^alpha over finished answers."""
    logw = alpha * np.asarray(logp, dtype=np.float64) - np.asarray(logq, dtype=np.float64)
    return np.where(finished, logw, -np.inf) if finished_only else logw


def run_weights(logw: np.ndarray) -> np.ndarray:
    """Self-normalised weights of one run; all 0 when no particle carries weight (no finished answer)."""
    if not np.isfinite(logw).any():
        return np.zeros(len(logw))
    return normalise_log_weights(logw)


def resample_index(weights: np.ndarray, u: float) -> int:
    """Inverse-CDF draw from normalised weights (uniform over the particles when all weights are 0)."""
    if not weights.sum() > 0:
        return min(int(u * len(weights)), len(weights) - 1)
    idx = int(np.searchsorted(np.cumsum(weights), u * weights.sum(), side="right"))
    return min(idx, len(weights) - 1)


def finished_mask(completions: list[list[int]], eos_ids) -> np.ndarray:
    eos = set(eos_ids)
    return np.array([bool(c) and c[-1] in eos for c in completions])


def sample_sir(engine: Engine, prompts, run_prompt, generators, config: PowerSamplingConfig, stats):
    N = config.num_particles
    eos_ids = engine.eos_ids
    rows = engine.start(prompts, [p for p in run_prompt for _ in range(N)])
    rng = RunRandom(generators, [r for r in range(len(run_prompt)) for _ in range(N)])
    steps = [config.max_new_tokens] * len(rows.tokens)
    _, toks, lps, lqs, _ = engine.extend(rows, rng, steps, config.proposal_tau, config.top_k, config.top_p)
    results = []
    for r in range(len(run_prompt)):
        sl = slice(r * N, (r + 1) * N)
        logp = np.array([sum(x) for x in lps[sl]])
        logq = np.array([sum(x) for x in lqs[sl]])
        finished = finished_mask(toks[sl], eos_ids)
        logw = importance_log_weights(config.alpha, logp, logq, finished, config.finished_only)
        w = run_weights(logw)
        stats.setdefault("finished_particles", []).append(int(finished.sum()))
        stats.setdefault("log_z", []).append(log_mean_exp(logw))
        stats.setdefault("final_ess", []).append(effective_sample_size(w))
        if config.return_all_particles:
            results.append([(t, float(lp), float(wi)) for t, lp, wi in zip(toks[sl], logp, w)])
        else:
            k = resample_index(w, float(rng.run_uniform(r)))
            results.append([(toks[sl][k], float(logp[k]), None)])
    return results
