"""Sampling benchmark: cost and quality of every power sampler, measured in one run.

  python benchmarks/sampling.py [--quick] [--out benchmarks/results/sampling.md]

(a) Speed: a reference-faithful MH (batch 1, one `model.generate` per proposal re-reading the prefix;
    benchmarks/reference_mh.py) against ours (batched chains, KV reuse) at identical hyperparameters
    (alpha 4, 64 new tokens, blocks of 16, 10 MH steps, top_k 50, suffix back to the current length),
    with plain sampling as the 1x floor.
(b) Quality per cost on the same 64-token model: mean self-reward log p(y|x) of MH, SMC and SIR.
(c) TV to the exact p_alpha on an enumerable model (vocab 5, 3 new tokens) against tokens forwarded.
"""

from __future__ import annotations

import argparse
import platform
import time

import numpy as np
import torch
from reference_mh import reference_mh  # noqa: E402  (script-local module)

from trl_power import PowerSampler, PowerSamplingConfig, exact_power_distribution
from trl_power.theory import empirical_distribution, total_variation
from trl_power.tiny_models import build_model, fit_to_distribution, trap_target

MODELS = {
    # overhead-bound: per-call Python/framework cost dominates
    "tiny (0.09M params)": dict(hidden_size=64, num_layers=2, num_heads=4),
    # compute/memory-bound, closer to real LLM decoding
    "small (6M params)": dict(hidden_size=384, num_layers=4, num_heads=6),
}


def long_model(name="tiny (0.09M params)"):
    return build_model(64, seed=7, initializer_range=0.3, max_position_embeddings=256, **MODELS[name])


def prompts(n, seed=0):
    g = np.random.default_rng(seed)
    return [[int(t) for t in g.integers(1, 64, size=8)] for _ in range(n)]


def run(model, cfg, ps):
    """Returns (output, CPU seconds per sample, tokens forwarded per sample). CPU time of this process
    (one thread), so that other load on the machine does not distort the comparison."""
    c0 = time.process_time()
    out = PowerSampler(model, None, cfg).sample(ps)
    n = len(out)
    return out, (time.process_time() - c0) / n, out.stats["tokens_forwarded"] / n


def speed(quick):
    hp = dict(alpha=4.0, max_new_tokens=64, block_size=16, mcmc_steps=10, top_k=50)
    n_ref = 2 if quick else 4
    ps = prompts(128)
    lines = [
        "| model | sampler | CPU s / sample | tokens fwd / sample | x plain | speed-up vs reference | mean log p |",
        "|---|---|---|---|---|---|---|",
    ]
    for name in MODELS:
        model = long_model(name)
        rows = []
        _, plain_s, t = run(
            model, PowerSamplingConfig(method="temperature", max_new_tokens=64, batch_size=64), ps
        )
        rows.append(("plain sampling (batch 128)", plain_s, t, None))
        c0, tok, lps = time.process_time(), 0, []
        for i, p in enumerate(ps[:n_ref]):
            _, lp, f, _, _ = reference_mh(model, p, hp["alpha"], 64, 16, 10, eos_id=0, top_k=50, seed=i)
            tok, lps = tok + f, lps + [lp]
        ref_s = (time.process_time() - c0) / n_ref
        rows.append(
            ("reference-faithful MH (batch 1, generate per proposal)", ref_s, tok / n_ref, np.mean(lps))
        )
        for bs in (8, 32, 128, 512):
            # the reference's proposal: temperature 1/alpha (proposal_temperature=None), not the library's default 1;
            # 512 chains: 4 per prompt
            cfg = PowerSamplingConfig(
                method="mh", mh_suffix_rule="current_length", proposal_temperature=None, batch_size=bs,
                num_samples_per_prompt=max(1, bs // len(ps)), **hp,
            )  # fmt: skip
            out, s, t = run(model, cfg, ps[: 2 * bs] if quick else ps)
            rows.append((f"ours MH (batch {bs}, KV reuse)", s, t, float(np.mean(out.base_logprobs))))
        for label, s, t, lp in rows:
            lp_s = "" if lp is None else f"{lp:.1f}"
            lines.append(
                f"| {name} | {label} | {s:.4f} | {t:.0f} | {s / plain_s:.1f} | {ref_s / s:.1f} | {lp_s} |"
            )
    return lines


def quality(model, quick):
    ps = prompts(8 if quick else 32, seed=1)
    lines = [
        "| method | setting | mean log p(y|x) | CPU s / sample | tokens fwd / sample |",
        "|---|---|---|---|---|",
    ]
    base = dict(alpha=4.0, max_new_tokens=64, batch_size=32)
    configs = [("temperature", "T=1", {}), ("low_temperature", "T=1/alpha", {})]
    configs += [("mh", f"blocks 16, {k} steps", dict(block_size=16, mcmc_steps=k)) for k in (2, 10)]
    configs += [("smc", f"N={n}", dict(num_particles=n, batch_size=8)) for n in (4, 16, 64)]
    configs += [("sir", f"N={n}", dict(num_particles=n, batch_size=8)) for n in (4, 16, 64)]
    for method, label, kw in configs:
        out, s, t = run(model, PowerSamplingConfig(method=method, **{**base, **kw}), ps)
        lines.append(f"| {method} | {label} | {np.mean(out.base_logprobs):.2f} | {s:.4f} | {t:.0f} |")
    return lines


def exactness(quick):
    """TV to the exact p_4 on two enumerable models: a random one and the trap (tiny_models.trap_target)."""
    n = 500 if quick else 2000
    lines = [
        "| model | method | setting | proposal tau | TV to exact p_4 | tokens fwd / sample | CPU s / sample |",
        "|---|---|---|---|---|---|---|",
    ]
    models = {
        "random": build_model(5, seed=3, initializer_range=0.25),
        "trap": fit_to_distribution(build_model(5, seed=0), [4], trap_target(), steps=300),
    }
    for name, model in models.items():
        exact = exact_power_distribution(model, None, [4], 4.0, 3)
        configs = [("low_temperature", "", None, {})]
        for tau in (None, 0.5):
            configs += [("mh", f"{k} steps", tau, dict(mcmc_steps=k, block_size=3)) for k in (10, 20, 40)]
            configs += [("smc", f"N={k}", tau, dict(num_particles=k)) for k in (8, 16, 32)]
            configs += [("sir", f"N={k}", tau, dict(num_particles=k)) for k in (8, 16, 32)]
        for method, label, tau, kw in configs:
            cfg = PowerSamplingConfig(
                method=method,
                alpha=4.0,
                max_new_tokens=3,
                num_samples_per_prompt=n,
                batch_size=500,
                proposal_temperature=tau,
                seed=1,
                **kw,
            )
            out, s, t = run(model, cfg, [[4]])
            tv = total_variation(empirical_distribution(out.completion_ids), exact)
            tau_s = "1/alpha" if tau is None else str(tau)
            lines.append(f"| {name} | {method} | {label} | {tau_s} | {tv:.3f} | {t:.1f} | {s:.5f} |")
    return lines


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--out", default=None)
    ap.add_argument("--parts", default="abc", help="which sections to run: any of a, b, c")
    args = ap.parse_args()
    torch.set_num_threads(1)  # tiny models: one thread beats two (and is robust to a busy machine)
    model = long_model()
    parts = [
        f"Machine: {platform.machine()}, {torch.get_num_threads()} thread(s), torch {torch.__version__}",
        "",
    ]
    if "a" in args.parts:
        parts += [
            "### (a) MH speed: reference-faithful vs ours (alpha 4, 64 new tokens, blocks of 16, 10 steps, top_k 50)",
            *speed(args.quick),
            "",
        ]
    if "b" in args.parts:
        parts += [
            "### (b) Quality per cost on the tiny 64-token model (alpha 4)",
            *quality(model, args.quick),
            "",
        ]
    if "c" in args.parts:
        n = 500 if args.quick else 2000
        parts += [f"### (c) TV to exact p_4 on enumerable models (vocab 5, 3 new tokens, {n} samples)"]
        parts += exactness(args.quick)
    text = "\n".join(parts)
    print(text)
    if args.out:
        with open(args.out, "w") as f:
            f.write(text + "\n")


if __name__ == "__main__":
    main()
