"""The embedded demo: power sampling on a tiny model whose per-token conditionals mislead.

The model is fitted offline (seconds) to a "trap": the first token a (p=0.6) leads to 16 mediocre
continuations, b (p=0.4) to one strong continuation "b c <eos>". Exact enumeration gives p_alpha; every
sampler is compared to it by total variation, with its cost in tokens forwarded per sample.
"""

from __future__ import annotations

import torch
from tqdm.auto import tqdm

from trl_power.sampling import PowerSampler, PowerSamplingConfig
from trl_power.theory import empirical_distribution, exact_power_distribution, total_variation
from trl_power.tiny_models import build_model, build_tokenizer, fit_to_distribution, trap_target


def run_sampling_demo(
    alpha: float = 4.0, num_samples: int = 1000, seed: int = 0, quick: bool = False
) -> list[dict]:
    torch.set_num_threads(1)
    n = 200 if quick else num_samples
    tok = build_tokenizer(["a", "b", "c", "q"], with_pad=False)
    print("Fitting the tiny trap model (vocab 5, 3 new tokens)...")
    model = fit_to_distribution(build_model(5, seed=seed), [4], trap_target(), steps=150 if quick else 300)
    base = exact_power_distribution(model, None, [4], 1.0, 3)
    exact = exact_power_distribution(model, None, [4], alpha, 3)
    strong = (2, 3, 0)
    print(f"p(b c <eos>) = {base[strong]:.3f} under the base model, {exact[strong]:.3f} under p^{alpha:g}")
    methods = [
        ("plain sampling", dict(method="temperature")),
        ("low temperature 1/alpha", dict(method="low_temperature")),
        ("MH, 20 steps", dict(method="mh", mcmc_steps=20, block_size=3)),
        ("SMC, 16 particles", dict(method="smc", num_particles=16)),
        ("SIR, 16 proposals", dict(method="sir", num_particles=16)),
    ]
    rows = []
    for name, kw in tqdm(methods, desc="samplers"):
        cfg = PowerSamplingConfig(
            alpha=alpha, max_new_tokens=3, num_samples_per_prompt=n, batch_size=500, seed=seed, **kw
        )
        out = PowerSampler(model, tok, cfg).sample([[4]])
        emp = empirical_distribution(out.completion_ids)
        rows.append(
            {
                "method": name,
                "tv_to_p_alpha": total_variation(emp, exact),
                "p_strong": emp.get(strong, 0.0),
                "tokens_per_sample": out.stats["tokens_forwarded"] / len(out),
                "ms_per_sample": 1000 * out.stats["seconds"] / len(out),
            }
        )
    print(f"\n{n} samples per method, alpha = {alpha:g}; exact p_alpha(b c <eos>) = {exact[strong]:.3f}\n")
    print(
        f"{'method':26s} {'TV to p_alpha':>13s} {'freq(b c <eos>)':>16s} {'tokens/sample':>14s} {'ms/sample':>10s}"
    )
    for r in rows:
        print(
            f"{r['method']:26s} {r['tv_to_p_alpha']:13.3f} {r['p_strong']:16.3f} "
            f"{r['tokens_per_sample']:14.1f} {r['ms_per_sample']:10.3f}"
        )
    return rows
