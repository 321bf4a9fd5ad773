"""Exact enumeration: log p(y|x) of every completion of a tiny model, the exact p_alpha(y) = p(y)^alpha / Z over them
(every finished one with `finished_only`), and `method="exact"`, which draws from it.

Tiny models only (the ground truth samplers and trainers are tested against); refuses more than
`exact_max_sequences` completions.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from trl_power.modeling import (
    call_model,
    eos_token_ids,
    eval_mode,
    merge_eos_ids,
    model_device,
    stop_token_ids,
)
from trl_power.prompts import tokenize_prompt
from trl_power.sampling.config import PowerSamplingConfig
from trl_power.sampling.engine import Engine
from trl_power.sampling.sir import resample_index
from trl_power.scoring import pad_prompt_completion, positions_from_mask
from trl_power.theory import finished_completions, normalise_log_weights, power_from_logprobs


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
    prompt_ids = tokenize_prompt(tokenizer, prompt)
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


def exact_power_distribution(
    model: torch.nn.Module,
    tokenizer: Any,
    prompt: str | Sequence[int],
    alpha: float,
    max_new_tokens: int,
    max_sequences: int = 200_000,
    finished_only: bool = True,
    stop_strings: Sequence[str] | None = None,
) -> dict[tuple[int, ...], float]:
    """Exact p_alpha(y|x) for every completion of a tiny model: {completion ids tuple: probability}.

    `finished_only=True` (the samplers' default): p^alpha over the answers that end with EOS (or a token holding one
    of `stop_strings`, `trl_power.modeling.stop_token_ids`) within `max_new_tokens` = H. `False`: (p_H)^alpha, the power of p truncated at H, where an answer cut at H counts
    with p(y_{1:H})^alpha (the mass of all its continuations, raised to alpha).
    """
    if not alpha > 0:
        raise ValueError(f"alpha must be > 0, got {alpha}")
    eos = eos_token_ids(model, tokenizer)
    if stop_strings:
        eos = merge_eos_ids(eos, stop_token_ids(tokenizer, stop_strings))
    logprobs, _ = exact_sequence_logprobs(
        model, tokenizer, prompt, max_new_tokens, max_sequences, eos_ids=eos
    )
    if finished_only:
        logprobs = finished_completions(logprobs, eos)
        if not logprobs:
            raise ValueError(f"No completion ends with EOS within max_new_tokens={max_new_tokens}.")
    return power_from_logprobs(logprobs, alpha)


def sample_exact(engine: Engine, prompts, run_prompt, generators, config: PowerSamplingConfig, stats):
    model = getattr(engine, "model", None)
    if not isinstance(model, torch.nn.Module):
        raise ValueError(
            'method="exact" enumerates with a transformers model; it does not run on the vLLM engine.'
        )
    eos_ids = engine.eos_ids
    tables = {}
    for i in sorted(set(run_prompt)):
        logprobs, forwarded = exact_sequence_logprobs(
            model, None, prompts[i], config.max_new_tokens, config.exact_max_sequences, eos_ids=eos_ids
        )
        engine.counter.prefill_tokens += forwarded
        if config.finished_only:
            logprobs = finished_completions(logprobs, eos_ids)
        keys = list(logprobs)
        lp = np.array([logprobs[k] for k in keys])
        tables[i] = (keys, lp, normalise_log_weights(config.alpha * lp))
    results = []
    for r, i in enumerate(run_prompt):
        keys, lp, w = tables[i]
        k = resample_index(w, float(torch.rand(1, generator=generators[r], dtype=torch.float64)))
        results.append([(list(keys[k]), float(lp[k]), None)])
    return results
