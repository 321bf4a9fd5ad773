"""The power distribution p_alpha(y|x) = p(y|x)^alpha / Z_alpha(x) as numbers.

- alpha <-> beta: KL-regularised RL with self-reward r = log p_ref has the optimum p_ref^(1 + 1/beta).
- p_alpha of a table of log-probabilities (`power_from_logprobs`; the enumeration of a tiny model's completions
  that fills the table runs the model and lives with the samplers, `trl_power.sampling.exact`).
- Self-normalised importance-weighted estimators from base samples y_i ~ p, with weights
  w_i(s) ∝ p(y_i)^(s-1), of E_{p_s}[log p], Var_{p_s}(log p), E_{p_s}[r], Cov_{p_s}(r, log p), and the
  predicted gain E_{p_alpha}[r] - E_p[r] = integral_1^alpha Cov_{p_s}(r, log p) ds (in closed form).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np


def alpha_to_beta(alpha: float) -> float:
    """beta = 1 / (alpha - 1): the KL coefficient whose self-reward optimum is p^alpha (alpha > 1)."""
    if not math.isfinite(alpha) or alpha <= 1:
        raise ValueError(f"alpha must be > 1 to correspond to a positive beta, got {alpha}")
    return 1.0 / (alpha - 1.0)


def beta_to_alpha(beta: float) -> float:
    """alpha = 1 + 1/beta (beta > 0)."""
    if not math.isfinite(beta) or beta <= 0:
        raise ValueError(f"beta must be > 0, got {beta}")
    return 1.0 + 1.0 / beta


def normalise_log_weights(log_weights: Sequence[float] | np.ndarray) -> np.ndarray:
    """w_i = exp(l_i) / sum_j exp(l_j), computed stably (the max is subtracted first)."""
    lw = np.asarray(log_weights, dtype=np.float64)
    w = np.exp(lw - lw.max())
    return w / w.sum()


def log_mean_exp(log_values: Sequence[float] | np.ndarray) -> float:
    """log((1/n) sum_i exp(l_i)), computed stably; -inf when every l_i is -inf."""
    lv = np.asarray(log_values, dtype=np.float64)
    top = lv.max()
    if not np.isfinite(top):
        return float(top)
    return float(top + np.log(np.exp(lv - top).mean()))


def power_from_logprobs(
    logprobs: Mapping[tuple[int, ...], float], alpha: float
) -> dict[tuple[int, ...], float]:
    """p_alpha(y) = exp(alpha * log p(y)) / sum_y' exp(alpha * log p(y')), computed stably."""
    keys = list(logprobs)
    w = normalise_log_weights(alpha * np.array([logprobs[k] for k in keys], dtype=np.float64))
    return dict(zip(keys, w.tolist()))


def finished_completions(
    logprobs: Mapping[tuple[int, ...], float], eos_ids: Sequence[int]
) -> dict[tuple[int, ...], float]:
    """The entries whose completion ends with EOS (the support of the finished-only target)."""
    eos = set(eos_ids)
    return {k: v for k, v in logprobs.items() if k and k[-1] in eos}


def empirical_distribution(
    samples: Sequence[Sequence[int]], weights: Sequence[float] | None = None
) -> dict[tuple[int, ...], float]:
    """The (weighted) empirical distribution of a list of completions."""
    if len(samples) == 0:
        raise ValueError("No samples.")
    w = np.ones(len(samples)) if weights is None else np.asarray(weights, dtype=np.float64)
    if np.any(w < 0) or not np.isfinite(w).all() or w.sum() <= 0:
        raise ValueError("Weights must be finite, non-negative and not all zero.")
    out: dict[tuple[int, ...], float] = {}
    for s, wi in zip(samples, w / w.sum()):
        key = tuple(int(t) for t in s)
        out[key] = out.get(key, 0.0) + float(wi)
    return out


def total_variation(p: Mapping[Any, float], q: Mapping[Any, float]) -> float:
    """TV(p, q) = 1/2 sum_y |p(y) - q(y)| over the union of supports."""
    keys = set(p) | set(q)
    return 0.5 * sum(abs(p.get(k, 0.0) - q.get(k, 0.0)) for k in keys)


def expected_tv_bound(p: Mapping[Any, float], n: int, delta: float = 1e-3) -> float:
    """A (1 - delta) upper bound on TV(p, empirical of n iid draws from p).

    E[TV] = 1/2 sum_y E|p̂(y) - p(y)| <= 1/2 sum_y sqrt(p(y)(1-p(y))/n)   (Jensen);
    TV is a function of the n draws that moves by at most 1/n when one draw changes, so McDiarmid gives
    P(TV > E[TV] + t) <= exp(-2 n t^2), i.e. t = sqrt(log(1/delta) / (2n)).
    """
    pv = np.array(list(p.values()), dtype=np.float64)
    mean_bound = 0.5 * np.sqrt(pv * (1 - pv) / n).sum()
    return float(mean_bound + math.sqrt(math.log(1 / delta) / (2 * n)))


# ----- importance-weighted estimators of power-distribution moments from base samples ---------------


def effective_sample_size(weights: Sequence[float] | np.ndarray, axis: int | None = None) -> Any:
    """ESS = (sum w)^2 / sum w^2 of (unnormalised) weights: n for n equal weights, 1 for a single non-zero one, 0
    when all are 0. A float, or with `axis` an array of the ESS along that axis."""
    w = np.asarray(weights, dtype=np.float64)
    num, den = np.asarray(w.sum(axis) ** 2), np.asarray((w**2).sum(axis))
    ess = np.divide(num, den, out=np.zeros_like(num), where=den > 0)
    return float(ess) if axis is None else ess


def masked_power_weights(lp: np.ndarray, mask: np.ndarray, s: np.ndarray) -> np.ndarray:
    """w_ij(s) ∝ mask_ij p(y_ij)^(s-1), normalised within prompt i, for every s: [..., P, n] -> [..., P, n, S]."""
    lp0 = np.where(mask > 0, lp, 0.0)[..., None]
    logw = np.where(mask[..., None] > 0, (s - 1.0) * lp0, -np.inf)
    logw = logw - logw.max(axis=-2, keepdims=True)
    w = np.exp(logw)
    return w / w.sum(axis=-2, keepdims=True)


def power_moments(
    r: np.ndarray, lp: np.ndarray, mask: np.ndarray, s: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The self-normalised importance estimates, per prompt i and power s, from base samples j of p (rows padded,
    `mask` 1 on real samples): Cov_{p_s}(r, log p) = sum_j w_ij(s) (r_ij - r̄_i(s)) (log p_ij - l̄_i(s)),
    E_{p_s}[r] = r̄_i(s) = sum_j w_ij(s) r_ij, and the ESS of the weights; each [..., P, S]."""
    w = masked_power_weights(lp, mask, s)
    lp0 = np.where(mask > 0, lp, 0.0)[..., None]
    rr = r[..., None]
    r_bar = (w * rr).sum(-2, keepdims=True)
    l_bar = (w * lp0).sum(-2, keepdims=True)
    cov = (w * (rr - r_bar) * (lp0 - l_bar)).sum(-2)
    return cov, r_bar.squeeze(-2), effective_sample_size(w, axis=-2)


def _one_prompt(values: Sequence[float], logp: Sequence[float], s: float) -> tuple[np.ndarray, ...]:
    r, lp = np.asarray(values, dtype=np.float64)[None], np.asarray(logp, dtype=np.float64)[None]
    if lp.size == 0:
        raise ValueError("No samples.")
    return power_moments(r, lp, np.ones_like(lp), np.array([float(s)]))


def power_weights(logp: Sequence[float], s: float) -> np.ndarray:
    """Self-normalised weights w_i ∝ p(y_i)^(s-1) that turn samples of p into samples of p_s."""
    lp = np.asarray(logp, dtype=np.float64)
    if lp.size == 0:
        raise ValueError("No samples.")
    return masked_power_weights(lp[None], np.ones((1, lp.size)), np.array([float(s)]))[0, :, 0]


def power_mean(values: Sequence[float], logp: Sequence[float], s: float) -> float:
    """E_{p_s}[f] ≈ sum_i w_i(s) f(y_i)."""
    return float(_one_prompt(values, logp, s)[1][0, 0])


def power_covariance(r: Sequence[float], logp: Sequence[float], s: float) -> float:
    """Cov_{p_s}(r, log p) ≈ sum_i w_i(s) (r_i - r̄_s)(log p_i - l̄_s)."""
    return float(_one_prompt(r, logp, s)[0][0, 0])


def power_variance_logp(logp: Sequence[float], s: float) -> float:
    """Var_{p_s}(log p) = d/ds E_{p_s}[log p] (>= 0: the self-reward rises with alpha)."""
    return power_covariance(logp, logp, s)


def predicted_gain(r: Sequence[float], logp: Sequence[float], alpha: float) -> float:
    """E_{p_alpha}[r] - E_p[r] = integral_1^alpha Cov_{p_s}(r, log p) ds, in closed form: the self-normalised estimate
    sum_i w_i(alpha) r_i minus the plain mean (the integrand is the derivative of the first term in s)."""
    return power_mean(r, logp, alpha) - float(np.mean(np.asarray(r, dtype=np.float64)))


def __getattr__(name: str) -> Any:
    """`exact_power_distribution` and `exact_sequence_logprobs` moved to `trl_power.sampling.exact` (they run a
    model); importing them from here still works."""
    if name in ("exact_power_distribution", "exact_sequence_logprobs"):
        from trl_power.sampling import exact

        return getattr(exact, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
