"""Plain and low-temperature sampling.

`temperature`: y_t ~ softmax(logits / T) (T = 1 is the base model p; the 1x cost floor).
`low_temperature`: y_t ~ softmax(alpha * logits), i.e. per-token p(y_t|prefix)^alpha renormalised. This is
NOT the power distribution: the exact power conditional also carries the suffix factor
zeta(prefix) = E_{suffix~p}[p(suffix|prefix)^(alpha-1)] that per-token sharpening ignores.
"""

from __future__ import annotations

from trl_power.sampling.config import PowerSamplingConfig
from trl_power.sampling.engine import Engine, RunRandom


def sample_plain(engine: Engine, prompts, run_prompt, generators, config: PowerSamplingConfig, stats):
    temperature = config.temperature if config.method == "temperature" else 1.0 / config.alpha
    rows = engine.start(prompts, run_prompt)
    rng = RunRandom(generators, range(len(run_prompt)))
    steps = [config.max_new_tokens] * len(run_prompt)
    _, toks, lps, _, _ = engine.extend(rows, rng, steps, temperature, config.top_k, config.top_p)
    return [[(t, sum(lp), None)] for t, lp in zip(toks, lps)]
