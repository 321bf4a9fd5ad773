"""Sampling-importance-resampling (best-of-N with the right weights).

Draw N completions y^(n) ~ q (proposal temperature tau, default 1/alpha), weight
w_n ∝ p(y^(n))^alpha / q(y^(n)) = exp(alpha * sum_t log p - sum_t log q), self-normalise, resample one.
Exact as N → ∞; the weighted set itself is a consistent estimate of p_alpha.
"""

from __future__ import annotations

import numpy as np
import torch

from trl_power.sampling.config import PowerSamplingConfig
from trl_power.sampling.engine import RunRandom, TokenCounter, decode, prefill
from trl_power.theory import normalise_log_weights


def resample_index(weights: np.ndarray, u: float) -> int:
    """Inverse-CDF draw from normalised weights."""
    idx = int(np.searchsorted(np.cumsum(weights), u * weights.sum(), side="right"))
    return min(idx, len(weights) - 1)


def sample_sir(
    model, prompts, run_prompt, generators, config: PowerSamplingConfig, eos_ids, counter: TokenCounter, stats
):
    N = config.num_particles
    rows = [p for p in run_prompt for _ in range(N)]
    state = prefill(model, prompts, rows, counter)
    rng = RunRandom(generators, [r for r in range(len(run_prompt)) for _ in range(N)])
    steps = torch.full((len(rows),), config.max_new_tokens)
    _, toks, lps, lqs = decode(
        model, state, rng, steps, eos_ids, config.proposal_tau, config.top_k, config.top_p, counter
    )
    results = []
    for r in range(len(run_prompt)):
        sl = slice(r * N, (r + 1) * N)
        logp = np.array([sum(x) for x in lps[sl]])
        logw = config.alpha * logp - np.array([sum(x) for x in lqs[sl]])
        w = normalise_log_weights(logw)
        stats.setdefault("ess", []).append(float(1.0 / (w**2).sum()))
        if config.return_all_particles:
            results.append([(t, float(lp), float(wi)) for t, lp, wi in zip(toks[sl], logp, w)])
        else:
            k = resample_index(w, float(rng.run_uniform(r)))
            results.append([(toks[sl][k], float(logp[k]), None)])
    return results
