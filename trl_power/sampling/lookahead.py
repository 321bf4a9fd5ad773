"""Lookahead power sampling (TMC-style, after Ji et al. 2026, "Scalable Power Sampling"): approximate by design.

The exact power conditional is p_alpha(v | prefix) ∝ p(v | prefix)^alpha * zeta(prefix + v), with
zeta(s) = E_{suffix ~ p(. | s)}[p(suffix | s)^(alpha - 1)] (times 1{suffix ends with EOS} for the finished-only
target). Each step keeps the K most likely next tokens v under p (`lookahead_candidates`), estimates log zeta for each
from M rollouts (`lookahead_rollouts`) drawn from p for at most `lookahead_horizon` tokens,

    log zeta_hat(v) = log mean_m p(s_m | prefix + v)^(alpha - 1),      jackknifed:  M L - (M - 1)/M sum_m L_(-m)

(L the log-mean over all rollouts, L_(-m) without rollout m; the jackknife removes the O(1/M) bias of the log of a
mean), and draws the next token from ∝ p(v)^alpha * zeta_hat(v) over the K candidates.

Where it is inexact, and by how much (measured, docs/sampling.md): (1) candidates outside the top K are never drawn;
(2) a rollout stopped by the horizon before EOS contributes the power of its truncated suffix, so zeta is that of a
shorter answer; (3) finite M leaves noise in the estimate and, through the normalisation over candidates, a bias of
order 1/M that the jackknife reduces. With K = the vocabulary, a horizon reaching max_new_tokens and M -> inf it is
exact. Cost per generated token: one branch (the top K of p) and K * M rollouts of up to the horizon.
"""

from __future__ import annotations

import numpy as np

from trl_power.sampling.config import PowerSamplingConfig
from trl_power.sampling.engine import Engine, RunRandom


def jackknife_log_mean(log_values: np.ndarray) -> float:
    """Bias-corrected estimate of log E[x] from log x_1..x_M: M L - (M-1)/M sum_m L_(-m), L = log mean x;
    -inf when every x is 0, L itself for M = 1."""
    lv = np.asarray(log_values, dtype=np.float64)
    M = lv.size
    top = lv.max()
    if not np.isfinite(top):
        return -np.inf
    x = np.exp(lv - top)
    full = np.log(x.mean()) + top
    if M == 1:
        return float(full)
    rest = x.sum() - x
    if (rest <= 0).any():  # a single rollout carries all the weight: no jackknife
        return float(full)
    loo = np.log(rest / (M - 1)) + top
    return float(M * full - (M - 1) / M * loo.sum())


def sample_lookahead(engine: Engine, prompts, run_prompt, generators, config: PowerSamplingConfig, stats):
    R = len(run_prompt)
    K, M = config.lookahead_candidates, config.lookahead_rollouts
    H, alpha = config.max_new_tokens, config.alpha
    eos = set(engine.eos_ids)
    rng = RunRandom(generators, range(R))
    rows = engine.start(prompts, run_prompt)
    toks: list[list[int]] = [[] for _ in range(R)]
    lps: list[list[float]] = [[] for _ in range(R)]
    live = list(range(R))  # runs still decoding, in row order of `rows`
    for t in range(H):
        if not live:
            break
        ids, logp, children = engine.branch(rows, K)
        k = len(ids[0])
        remaining = H - t - 1  # tokens a continuation of the child may still have
        # rollouts: M per child, from p, up to the horizon (children that already end get none)
        ended = [v in eos for row in ids for v in row]
        need = [c for c in range(len(ended)) if not ended[c] and remaining > 0]
        log_zeta = np.zeros(len(ended))
        if need:
            roll = children.select([c for c in need for _ in range(M)])
            # child j's M rollouts draw, in row order, from the stream of the run it belongs to
            roll_rng = RunRandom(
                [rng.generators[live[c // k]] for c in need], [j for j in range(len(need)) for _ in range(M)]
            )
            steps = [min(config.lookahead_horizon, remaining)] * len(roll.tokens)
            _, sfx, sfx_lp, _, _ = engine.extend(roll, roll_rng, steps, 1.0, None, None)
            for j, c in enumerate(need):
                values = []
                for m in range(M):
                    s = sfx[j * M + m]
                    cut = len(s) == remaining and not (s and s[-1] in eos)  # cut at max_new_tokens
                    values.append(
                        -np.inf if (config.finished_only and cut) else (alpha - 1) * sum(sfx_lp[j * M + m])
                    )
                log_zeta[c] = jackknife_log_mean(np.array(values))
        if config.finished_only and remaining == 0:  # the last token: only EOS finishes the answer
            log_zeta = np.array([0.0 if e else -np.inf for e in ended])
        u = rng.uniforms([True] * len(live), rows=live).tolist()
        pick, keep, next_live = [], [], []
        for j, run in enumerate(live):
            score = alpha * np.array(logp[j]) + log_zeta[j * k : (j + 1) * k]
            if not np.isfinite(score).any():  # no candidate with an estimate: fall back to p^alpha
                score = alpha * np.array(logp[j])
            w = np.exp(score - score.max())
            choice = min(int(np.searchsorted(np.cumsum(w), u[j] * w.sum(), side="right")), k - 1)
            v = ids[j][choice]
            toks[run].append(v)
            lps[run].append(float(logp[j][choice]))
            pick.append(j * k + choice)
            if v not in eos:
                keep.append(len(pick) - 1)
                next_live.append(run)
        rows = children.select([pick[i] for i in keep])
        live = next_live
    return [[(toks[r], sum(lps[r]), None)] for r in range(R)]
