"""Plain, greedy and low-temperature sampling.

`plain` (also `temperature`, its former name): y_t ~ softmax(logits / T) (T = 1 is the base model p; the 1x cost floor).
`greedy`: y_t = argmax_v p(v | y_<t) (the proposal truncated to its top token).
`low_temperature`: y_t ~ softmax(alpha * logits), i.e. per-token p(y_t|prefix)^alpha renormalised. This is
NOT the power distribution: the exact power conditional also carries the suffix factor
zeta(prefix) = E_{suffix~p}[p(suffix|prefix)^(alpha-1)] that per-token sharpening ignores.
"""

from __future__ import annotations

from trl_power.sampling.config import PowerSamplingConfig
from trl_power.sampling.engine import Engine, RunRandom


def sample_plain(engine: Engine, prompts, run_prompt, generators, config: PowerSamplingConfig, stats):
    temperature = config.temperature if config.method in ("plain", "temperature") else 1.0 / config.alpha
    top_k, top_p = config.top_k, config.top_p
    if config.method == "greedy":
        temperature, top_k, top_p = 1.0, 1, None
    rows = engine.start(prompts, run_prompt)
    rng = RunRandom(generators, range(len(run_prompt)))
    steps = [config.max_new_tokens] * len(run_prompt)
    _, toks, lps, _, _ = engine.extend(rows, rng, steps, temperature, top_k, top_p)
    return [[(t, sum(lp), None)] for t, lp in zip(toks, lps)]
