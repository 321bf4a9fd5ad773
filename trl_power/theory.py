"""The power distribution p_alpha(y|x) = p(y|x)^alpha / Z_alpha(x) as numbers.

- alpha <-> beta: KL-regularised RL with self-reward r = log p_ref has the optimum p_ref^(1 + 1/beta).
- Exact enumeration of every completion of a tiny model (the ground truth samplers are tested against).
- Self-normalised importance-weighted estimators from base samples y_i ~ p, with weights
  w_i(s) ∝ p(y_i)^(s-1), of E_{p_s}[log p], Var_{p_s}(log p), E_{p_s}[r], Cov_{p_s}(r, log p), and the
  predicted gain E_{p_alpha}[r] - E_p[r] = integral_1^alpha Cov_{p_s}(r, log p) ds (in closed form).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch

from trl_power.modeling import call_model, eos_token_ids, eval_mode, model_device
from trl_power.scoring import pad_prompt_completion, positions_from_mask


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


def _prompt_ids(prompt: str | Sequence[int], tokenizer: Any) -> list[int]:
    if isinstance(prompt, str):
        if tokenizer is None:
            raise ValueError("A tokenizer is needed for text prompts.")
        return list(tokenizer(prompt, add_special_tokens=True)["input_ids"])
    return [int(i) for i in prompt]


@torch.no_grad()
def exact_sequence_logprobs(
    model: torch.nn.Module,
    tokenizer: Any,
    prompt: str | Sequence[int],
    max_new_tokens: int,
    max_sequences: int = 200_000,
    batch_size: int = 4096,
    eos_ids: Sequence[int] | None = None,
) -> tuple[dict[tuple[int, ...], float], int]:
    """log p(y|x) of every completion (ended by EOS, or cut at `max_new_tokens`), by breadth-first
    enumeration. Returns ({completion ids: log p}, tokens forwarded)."""
    if max_new_tokens < 1:
        raise ValueError("max_new_tokens must be >= 1")
    prompt_ids = _prompt_ids(prompt, tokenizer)
    if not prompt_ids:
        raise ValueError("The prompt is empty.")
    eos = set(eos_ids) if eos_ids is not None else set(eos_token_ids(model, tokenizer))
    vocab = model.get_output_embeddings().weight.shape[0]
    non_eos = vocab - len(eos & set(range(vocab)))
    n_leaves = sum(non_eos**k for k in range(max_new_tokens)) * len(eos) + non_eos**max_new_tokens
    if n_leaves > max_sequences:
        raise ValueError(
            f"Exact enumeration needs {n_leaves} completions (vocab {vocab}, {max_new_tokens} new tokens), "
            f"more than max_sequences={max_sequences}; it is meant for tiny models only."
        )
    device = model_device(model)
    leaves: dict[tuple[int, ...], float] = {}
    frontier: list[tuple[tuple[int, ...], float]] = [((), 0.0)]
    forwarded = 0
    with eval_mode(model):
        for depth in range(max_new_tokens):
            nxt: list[tuple[tuple[int, ...], float]] = []
            for start in range(0, len(frontier), batch_size):
                chunk = frontier[start : start + batch_size]
                prefixes = [list(prefix) for prefix, _ in chunk]
                ids, mask, _, _ = pad_prompt_completion(
                    [prompt_ids] * len(chunk), [p or [] for p in prefixes]
                )
                # the last live slot of each row predicts the next token
                width = len(prompt_ids) + depth
                ids, mask = ids[:, :width].to(device), mask[:, :width].to(device)
                logits = call_model(model, ids, mask, positions_from_mask(mask)).logits[:, -1].float()
                forwarded += int(mask.sum())
                logp = torch.log_softmax(logits, -1).cpu().double().numpy()
                for (prefix, lp_prefix), row in zip(chunk, logp):
                    for v in range(vocab):
                        seq, lp = (*prefix, v), lp_prefix + float(row[v])
                        if v in eos or depth + 1 == max_new_tokens:
                            leaves[seq] = lp
                        else:
                            nxt.append((seq, lp))
            frontier = nxt
    return leaves, forwarded


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


def exact_power_distribution(
    model: torch.nn.Module,
    tokenizer: Any,
    prompt: str | Sequence[int],
    alpha: float,
    max_new_tokens: int,
    max_sequences: int = 200_000,
    finished_only: bool = True,
) -> dict[tuple[int, ...], float]:
    """Exact p_alpha(y|x) for every completion of a tiny model: {completion ids tuple: probability}.

    `finished_only=True` (the samplers' default): p^alpha over the answers that end with EOS within
    `max_new_tokens` = H. `False`: (p_H)^alpha, the power of p truncated at H, where an answer cut at H counts
    with p(y_{1:H})^alpha (the mass of all its continuations, raised to alpha).
    """
    if not alpha > 0:
        raise ValueError(f"alpha must be > 0, got {alpha}")
    eos = eos_token_ids(model, tokenizer)
    logprobs, _ = exact_sequence_logprobs(
        model, tokenizer, prompt, max_new_tokens, max_sequences, eos_ids=eos
    )
    if finished_only:
        logprobs = finished_completions(logprobs, eos)
        if not logprobs:
            raise ValueError(f"No completion ends with EOS within max_new_tokens={max_new_tokens}.")
    return power_from_logprobs(logprobs, alpha)


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


def power_weights(logp: Sequence[float], s: float) -> np.ndarray:
    """Self-normalised weights w_i ∝ p(y_i)^(s-1) that turn samples of p into samples of p_s."""
    lp = np.asarray(logp, dtype=np.float64)
    if lp.size == 0:
        raise ValueError("No samples.")
    return normalise_log_weights((s - 1.0) * lp)


def effective_sample_size(weights: Sequence[float]) -> float:
    """ESS = (sum w)^2 / sum w^2."""
    w = np.asarray(weights, dtype=np.float64)
    return float(w.sum() ** 2 / (w**2).sum())


def power_mean(values: Sequence[float], logp: Sequence[float], s: float) -> float:
    """E_{p_s}[f] ≈ sum_i w_i(s) f(y_i)."""
    return float(np.dot(power_weights(logp, s), np.asarray(values, dtype=np.float64)))


def power_covariance(r: Sequence[float], logp: Sequence[float], s: float) -> float:
    """Cov_{p_s}(r, log p) ≈ sum_i w_i(s) (r_i - r̄_s)(log p_i - l̄_s)."""
    w = power_weights(logp, s)
    r, lp = np.asarray(r, dtype=np.float64), np.asarray(logp, dtype=np.float64)
    return float(np.dot(w, (r - w @ r) * (lp - w @ lp)))


def power_variance_logp(logp: Sequence[float], s: float) -> float:
    """Var_{p_s}(log p) = d/ds E_{p_s}[log p] (>= 0: the self-reward rises with alpha)."""
    return power_covariance(logp, logp, s)


def predicted_gain(r: Sequence[float], logp: Sequence[float], alpha: float) -> float:
    """E_{p_alpha}[r] - E_p[r] = integral_1^alpha Cov_{p_s}(r, log p) ds, in closed form: the self-normalised estimate
    sum_i w_i(alpha) r_i minus the plain mean (the integrand is the derivative of the first term in s)."""
    return power_mean(r, logp, alpha) - float(np.mean(np.asarray(r, dtype=np.float64)))
