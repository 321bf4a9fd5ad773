"""Sequential Monte Carlo power sampling (Power-SMC, Azizi et al. 2026).

N particles per run, proposal q ∝ p^(1/tau) (default tau = 1/alpha). Each new token multiplies a
particle's weight by p(y_t)^alpha / q(y_t); for tau = 1/alpha that is the local normaliser
sum_v p(v|prefix)^alpha. When ESS = (sum w)^2 / sum w^2 < ess_threshold * N the run's particles are
resampled systematically (the KV cache rows are reordered with them, a memory move). Finished particles
(EOS) keep their weight. At the end one completion is drawn from the weighted set, or the whole set is
returned with its normalised weights.
"""

from __future__ import annotations

import numpy as np
import torch

from trl_power.sampling.config import PowerSamplingConfig
from trl_power.sampling.engine import RunRandom, TokenCounter, prefill, sample_step
from trl_power.sampling.sir import resample_index
from trl_power.theory import normalise_log_weights


def systematic_resample(weights: np.ndarray, u: float) -> np.ndarray:
    """Indices a_k = min{j: cumsum(w)_j > (u + k)/N}, k = 0..N-1 (one uniform u ∈ [0,1))."""
    N = len(weights)
    points = (u + np.arange(N)) / N
    return np.minimum(np.searchsorted(np.cumsum(weights), points, side="right"), N - 1)


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
    for _ in range(config.max_new_tokens):
        if not bool(alive.any()):
            break
        token, lp_t, lq_t = sample_step(
            model, state, alive, rng, config.proposal_tau, config.top_k, config.top_p, counter
        )
        a = alive.tolist()
        inc = (config.alpha * lp_t - lq_t).double().cpu().numpy()
        lp_list = lp_t.tolist()
        tk = token.tolist()
        for i in range(R * N):
            if a[i]:
                toks[i].append(tk[i])
                lps[i].append(lp_list[i])
                logw[i] += inc[i]
        alive = alive & ~torch.isin(token, eos)
        # resample runs whose ESS fell below the threshold
        order = np.arange(R * N)
        for r in range(R):
            sl = slice(r * N, (r + 1) * N)
            w = normalise_log_weights(logw[sl])
            ess = 1.0 / (w**2).sum()
            ess_sum += ess
            ess_count += 1
            if ess < config.ess_threshold * N:
                idx = systematic_resample(w, float(rng.run_uniform(r)))
                order[sl] = r * N + idx
                # equal weights that keep the run's normalising-constant estimate
                lse = logw[sl].max() + np.log(np.exp(logw[sl] - logw[sl].max()).mean())
                logw[sl] = lse
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
    results = []
    for r in range(R):
        sl = slice(r * N, (r + 1) * N)
        w = normalise_log_weights(logw[sl])
        rows = range(r * N, (r + 1) * N)
        if config.return_all_particles:
            results.append([(toks[i], sum(lps[i]), float(w[i - r * N])) for i in rows])
        else:
            k = resample_index(w, float(rng.run_uniform(r)))
            results.append([(toks[r * N + k], sum(lps[r * N + k]), None)])
    return results
