"""Exact sampling by enumeration: draw from p_alpha(y) = p(y)^alpha / Z computed over every completion (every
finished one with `finished_only`).

Tiny models only (the ground truth for tests); refuses more than `exact_max_sequences` completions.
"""

from __future__ import annotations

import numpy as np
import torch

from trl_power.sampling.config import PowerSamplingConfig
from trl_power.sampling.engine import Engine
from trl_power.sampling.sir import resample_index
from trl_power.theory import exact_sequence_logprobs, finished_completions, normalise_log_weights


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
