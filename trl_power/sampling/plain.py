"""Plain and low-temperature sampling.

`temperature`: y_t ~ softmax(logits / T) (T = 1 is the base model p; the 1x cost floor).
`low_temperature`: y_t ~ softmax(alpha * logits), i.e. per-token p(y_t|prefix)^alpha renormalised. This is
NOT the power distribution: the exact power conditional also carries the suffix factor
zeta(prefix) = E_{suffix~p}[p(suffix|prefix)^(alpha-1)] that per-token sharpening ignores.
"""

from __future__ import annotations

import torch

from trl_power.sampling.config import PowerSamplingConfig
from trl_power.sampling.engine import RunRandom, TokenCounter, decode, prefill


def sample_plain(
    model, prompts, run_prompt, generators, config: PowerSamplingConfig, eos_ids, counter: TokenCounter, stats
):
    temperature = config.temperature if config.method == "temperature" else 1.0 / config.alpha
    state = prefill(model, prompts, run_prompt, counter)
    rng = RunRandom(generators, range(len(run_prompt)))
    steps = torch.full((len(run_prompt),), config.max_new_tokens)
    _, toks, lps, _ = decode(
        model, state, rng, steps, eos_ids, temperature, config.top_k, config.top_p, counter
    )
    return [[(t, sum(lp), None)] for t, lp in zip(toks, lps)]
