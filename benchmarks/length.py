"""Power samplers at length: accuracy to the exact p^alpha and cost from 3 to 512 new tokens, on a Markov model whose
power distribution is known at any length (the measurement behind the defaults, docs/sampling.md).

    python benchmarks/length.py --out benchmarks/results/length        # .md and .jsonl (one line per cell)

Model: `trl_power.tiny_models.markov_model(two_cycle_logits())`, next-token law depending on the current token alone,
two cycles of words with rare EOS (under p most answers run ~100 tokens; under p^4 they are shorter and split between
the cycles, where low temperature starts one cycle 9 times in 10). Its p^alpha over finished answers within H new
tokens follows by dynamic programming (`markov_power_law`). alpha = 4, one prompt, `--samples` independent answers per
cell (each its own run / chain).

Accuracy: TV between the answers' law and p^alpha's on (a) the first two tokens ("prefix"), (b) the length in bins of
the exact law (deciles, merged where equal, a cut answer its own bin), each beside the 95th percentile of the same TV
for an exact sampler with as many answers ("floor", by simulation): a cell above its floor is off p^alpha (a 5% false
alarm rate per number). The truncation column: p^alpha's mass beyond H (1 - Z_H / Z_4096, exact), what a
finished-only target at H leaves out of the untruncated p^alpha. Cost: tokens forwarded per answer (`stats`) and wall
seconds per answer (one thread; the machine may have been shared, see the results file's header).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import time
import warnings
from collections import Counter
from pathlib import Path

import numpy as np
import torch

from trl_power import PowerSampler, PowerSamplingConfig
from trl_power.tiny_models import (
    build_tokenizer,
    markov_log_transitions,
    markov_model,
    markov_power_law,
    ring_logits,
    two_cycle_logits,
)

ALPHA = 4.0
PROMPT = [9]
LENGTHS = (3, 16, 64, 256, 512)


def methods(H: int, quick: bool) -> dict[str, dict]:
    """The grid: the library's defaults and the settings a default could move to."""
    grid = {
        "plain": dict(method="plain"),
        "low temperature": dict(method="low_temperature"),
        "MH defaults": dict(method="mh"),
        "MH 1 block x 30": dict(method="mh", block_size=H, mcmc_steps=30),
        "MH 1 block x 100": dict(method="mh", block_size=H, mcmc_steps=100),
        "SMC defaults (32, tau 1)": dict(method="smc"),
        "SMC 16": dict(method="smc", num_particles=16),
        "SMC 64": dict(method="smc", num_particles=64),
        "SMC 32 tau 0.5": dict(method="smc", proposal_temperature=0.5),
        "SMC 32 tau 1/alpha": dict(method="smc", proposal_temperature=None),
        "SMC 32 interval 16": dict(method="smc", resample_interval=16),
        "SIR 64": dict(method="sir", num_particles=64),
        "SIR 256": dict(method="sir", num_particles=256),
    }
    if quick:
        grid = {k: v for k, v in grid.items() if k in ("plain", "MH defaults", "SMC defaults (32, tau 1)")}
    return grid


def decile_edges(values: list[int], cdf: np.ndarray, bins: int = 10) -> list[tuple[int, int]]:
    """(low, high) ranges of the sorted integer `values` holding about 1/bins of a law's mass each (`cdf`: the law's
    cumulative mass at each value, ending at 1)."""
    edges, low = [], values[0]
    for k, v in enumerate(values):
        if cdf[k] >= (len(edges) + 1) / bins or v == values[-1]:
            edges.append((low, v))
            low = v + 1
    return edges


def length_bins(law: dict, bins: int = 10) -> list[tuple[int, int]]:
    """(low, high) length ranges of the finished answers holding about 1/bins of p^alpha's mass each."""
    lengths = sorted(n for n, f in law if f)
    cdf = np.cumsum([law[(n, 1)] for n in lengths])
    return decile_edges(lengths, cdf / cdf[-1], bins)


def binned(length_law: dict, edges) -> dict:
    out: dict = {}
    for (n, f), p in length_law.items():
        key = "cut" if not f else next(k for k, (lo, hi) in enumerate(edges) if lo <= n <= hi)
        out[key] = out.get(key, 0.0) + p
    return out


def tv(a: dict, b: dict) -> float:
    return 0.5 * sum(abs(a.get(k, 0.0) - b.get(k, 0.0)) for k in set(a) | set(b))


def floor(law: dict, n: int, rng: np.random.Generator, reps: int = 2000) -> float:
    p = np.array(list(law.values()))
    p = p / p.sum()
    return float(np.quantile([0.5 * np.abs(rng.multinomial(n, p) / n - p).sum() for _ in range(reps)], 0.95))


def empirical(keys) -> dict:
    counts = Counter(keys)
    n = sum(counts.values())
    return {k: c / n for k, c in counts.items()}


def sample_timed(model, tokenizer, prompt: list[int], H: int, settings: dict, n: int):
    """n answers to `prompt` at alpha 4 (one run each, seed 0): the output, the wall seconds, the warnings' texts."""
    config = PowerSamplingConfig(
        alpha=ALPHA, max_new_tokens=H, num_samples_per_prompt=n, batch_size=2048, seed=0, **settings
    )
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        start = time.perf_counter()
        out = PowerSampler(model, tokenizer, config).sample([prompt])
        seconds = time.perf_counter() - start
    return out, seconds, [str(w.message)[:80] for w in caught]


def mark(v: float, floor_: float) -> str:
    """A TV, in bold when above its floor."""
    return f"**{v:.3f}**" if v > floor_ else f"{v:.3f}"


def opt(v, fmt: str) -> str:
    return "" if v is None else format(v, fmt)


def run_cell(model, tokenizer, H: int, settings: dict, n: int, exact: dict, edges) -> dict:
    out, seconds, caught = sample_timed(model, tokenizer, PROMPT, H, settings, n)
    ids = out.completion_ids
    lengths = empirical((len(y), int(bool(y) and y[-1] == 0)) for y in ids)
    prefix = empirical(tuple(y[:2]) for y in ids)
    s = out.stats
    return {
        "tv_prefix": tv(prefix, exact["prefix"]),
        "tv_length": tv(binned(lengths, edges), binned(exact["length"], edges)),
        "mean_length": float(np.mean([len(y) for y in ids])),
        "unfinished": int(sum(not f for f in out.finished)),
        "tokens_per_answer": s["tokens_forwarded"] / n,
        "seconds_per_answer": seconds / n,
        "final_ess": s.get("final_ess"),
        "degenerate_runs": s.get("degenerate_runs"),
        "acceptance_rate": s.get("acceptance_rate"),
        "warnings": caught,
    }


RING_METHODS = {
    "plain": dict(method="plain"),
    "SMC 64 (check every token: transformers default)": dict(method="smc", num_particles=64),
    "SMC 16": dict(method="smc", num_particles=16),
    "SMC 256": dict(method="smc", num_particles=256),
    "SMC 64 interval 2": dict(method="smc", num_particles=64, resample_interval=2),
    "SMC 64 interval 4": dict(method="smc", num_particles=64, resample_interval=4),
    "SMC 64 interval 8 (vLLM default)": dict(method="smc", num_particles=64, resample_interval=8),
    "SMC 64 interval 32 (vLLM default before)": dict(method="smc", num_particles=64, resample_interval=32),
    "SIR 64": dict(method="sir", num_particles=64),
    "MH 1 block x 30": dict(method="mh", block_size=4096, mcmc_steps=30),
}


def ring_main(args) -> None:
    """`--model ring`: `ring_logits(K)` at K in `--lengths`, horizon K + 8 (p^4's answers: the K-token ones, each
    position's rare word b independently with probability 1 - q, q = 0.6^4 / (0.6^4 + 0.4^4)); accuracy is the TV of
    the number of b's in an answer (in decile bins of its exact Binomial(K, 1 - q) law) and of the first two tokens."""
    from scipy.stats import binom

    q = 0.6**ALPHA / (0.6**ALPHA + 0.4**ALPHA)
    jsonl = Path(args.out).with_suffix(".jsonl")
    done = set()
    if jsonl.exists():
        done = {(r["K"], r["method"]) for r in map(json.loads, jsonl.read_text().splitlines())}
    if min(args.lengths) < 8:
        raise SystemExit(
            "--model ring needs K >= 8 (the horizon K + 8 must not admit a second lap, 2K + 1 tokens)"
        )
    rng = np.random.default_rng(0)
    for K in args.lengths:
        V = 2 * K + 2
        hidden = max(128, 64 * math.ceil(V / 64))
        model = markov_model(ring_logits(K), hidden_size=hidden, num_heads=hidden // 64)
        tokenizer = build_tokenizer([f"w{i}" for i in range(1, V - 1)], with_pad=False)
        count_law = {k: float(binom.pmf(k, K, 1 - q)) for k in range(K + 1)}
        edges = decile_edges(list(count_law), np.cumsum(list(count_law.values())))
        exact_bins = {i: sum(count_law[k] for k in range(lo, hi + 1)) for i, (lo, hi) in enumerate(edges)}
        exact_prefix = {(1, 3): q * q, (1, 4): q * (1 - q), (2, 3): (1 - q) * q, (2, 4): (1 - q) ** 2}
        floors = {
            "floor_count": floor(exact_bins, args.samples, rng),
            "floor_prefix": floor(exact_prefix, args.samples, rng),
        }
        for name, settings in RING_METHODS.items():
            if (args.methods and name not in args.methods) or (K, name) in done:
                continue
            out, seconds, caught = sample_timed(model, tokenizer, [V - 1], K + 8, settings, args.samples)
            ids = out.completion_ids
            one_lap = [len(y) == K + 1 and y[-1] == 0 for y in ids]
            counts = [sum(t % 2 == 0 for t in y if t) for y in ids]
            wrong_length = len(ids) - sum(one_lap)
            # an answer that is not one lap (p^4 gives them no mass) falls in a bin of its own, counted by the TV
            got_bins = empirical(
                next(i for i, (lo, hi) in enumerate(edges) if lo <= c <= hi) if ok else "not one lap"
                for c, ok in zip(counts, one_lap)
            )
            s = out.stats
            row = {
                "K": K, "method": name, "settings": settings, "samples": args.samples, **floors,
                "tv_count": tv(got_bins, exact_bins), "tv_prefix": tv(empirical(tuple(y[:2]) for y in ids), exact_prefix),
                "mean_b": float(np.mean([c for c, ok in zip(counts, one_lap) if ok] or [float("nan")])), "exact_mean_b": K * (1 - q), "not_one_lap": wrong_length,
                "tokens_per_answer": s["tokens_forwarded"] / args.samples, "seconds_per_answer": seconds / args.samples,
                "final_ess": s.get("final_ess"), "resamples": s.get("resample_count"), "warnings": caught,
            }  # fmt: skip
            with jsonl.open("a") as f:
                f.write(json.dumps(row) + "\n")
            print(json.dumps({k: v for k, v in row.items() if k not in ("settings", "warnings")}), flush=True)
    rows = [json.loads(line) for line in jsonl.read_text().splitlines()]
    lines = [
        f"# SMC's resampling at length on the ring model (benchmarks/length.py --model ring), "
        f"{time.strftime('%Y-%m-%d')}, one torch thread",
        "",
        "TV to p^4's exact law of the number of rare words b (decile bins) and of the first two tokens, beside an exact "
        "sampler's 95th percentile (floor); **bold**: above it.",
        "",
        "| K (answer tokens) | method | TV b-count (floor) | TV prefix (floor) | mean b (exact) | tokens / answer | "
        "s / answer | final ESS | resamples |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['K']} | {r['method']} | {mark(r['tv_count'], r['floor_count'])} ({r['floor_count']:.3f}) | "
            f"{mark(r['tv_prefix'], r['floor_prefix'])} ({r['floor_prefix']:.3f}) | {r['mean_b']:.1f} "
            f"({r['exact_mean_b']:.1f}) | {r['tokens_per_answer']:.0f} | {r['seconds_per_answer']:.4f} | "
            f"{opt(r['final_ess'], '.1f')} | {opt(r['resamples'], 'd')} |"
        )
    Path(args.out).with_suffix(".md").write_text("\n".join(lines) + "\n")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="benchmarks/results/length")
    parser.add_argument("--samples", type=int, default=200)
    parser.add_argument("--lengths", type=int, nargs="+", default=list(LENGTHS))
    parser.add_argument("--methods", nargs="*", default=None, help="names of the grid to run (default: all)")
    parser.add_argument("--quick", action="store_true", help="plain, MH and SMC at their defaults only")
    parser.add_argument(
        "--model", choices=["two_cycle", "ring"], default="two_cycle", help="ring: --lengths are its K"
    )
    args = parser.parse_args()
    torch.set_num_threads(1)
    if args.model == "ring":
        return ring_main(args)
    model = markov_model(two_cycle_logits())
    tokenizer = build_tokenizer([f"w{i}" for i in range(1, 10)], with_pad=False)
    log_p = markov_log_transitions(model)
    z_inf = markov_power_law(log_p, PROMPT[-1], ALPHA, 4096)["log_z"]
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    done = set()
    jsonl = out.with_suffix(".jsonl")
    if jsonl.exists():  # resume: cells already measured are kept
        done = {(r["H"], r["method"]) for r in map(json.loads, jsonl.read_text().splitlines())}
    rng = np.random.default_rng(0)
    for H in args.lengths:
        exact = markov_power_law(log_p, PROMPT[-1], ALPHA, H)
        edges = length_bins(exact["length"])
        floors = {
            "floor_prefix": floor(exact["prefix"], args.samples, rng),
            "floor_length": floor(binned(exact["length"], edges), args.samples, rng),
        }
        beyond = 1 - math.exp(exact["log_z"] - z_inf)
        for name, settings in methods(H, args.quick).items():
            if (args.methods and name not in args.methods) or (H, name) in done:
                continue
            row = run_cell(model, tokenizer, H, settings, args.samples, exact, edges)
            row = {"H": H, "method": name, "settings": settings, "samples": args.samples,
                   "exact_mean_length": exact["mean_length"], "mass_beyond_H": beyond, **floors, **row}  # fmt: skip
            with jsonl.open("a") as f:
                f.write(json.dumps(row) + "\n")
            print(json.dumps({k: v for k, v in row.items() if k not in ("settings", "warnings")}), flush=True)
    write_table(jsonl, out.with_suffix(".md"))


def write_table(jsonl: Path, md: Path) -> None:
    rows = [json.loads(line) for line in jsonl.read_text().splitlines()]
    cpu = "avx512f" if "avx512f" in Path("/proc/cpuinfo").read_text() else "avx2"
    lines = [
        f"# Power samplers at length (benchmarks/length.py), {time.strftime('%Y-%m-%d')}, {platform.machine()} "
        f"{os.cpu_count()} cores ({cpu}), one torch thread",
        "",
        "TV to the exact p^4 (first two tokens; length in decile bins) beside an exact sampler's 95th percentile "
        "(floor); **bold**: above its floor. Cost: tokens forwarded and seconds per answer.",
        "",
    ]
    for H in sorted({r["H"] for r in rows}):
        sub = [r for r in rows if r["H"] == H]
        r0 = sub[0]
        lines += [
            f"## H = {H} new tokens: p^4's mean length {r0['exact_mean_length']:.1f}, its mass beyond H "
            f"{r0['mass_beyond_H']:.3f}; floors {r0['floor_prefix']:.3f} (prefix), {r0['floor_length']:.3f} (length), "
            f"{r0['samples']} answers per cell",
            "",
            "| method | TV prefix | TV length | mean length | cut | tokens / answer | s / answer | final ESS | "
            "degenerate runs | acceptance |",
            "|---|---|---|---|---|---|---|---|---|---|",
        ]
        for r in sub:
            lines.append(
                f"| {r['method']} | {mark(r['tv_prefix'], r['floor_prefix'])} | {mark(r['tv_length'], r['floor_length'])} "
                f"| {r['mean_length']:.1f} | {r['unfinished']} | {r['tokens_per_answer']:.0f} | "
                f"{r['seconds_per_answer']:.4f} | {opt(r['final_ess'], '.1f')} | {opt(r['degenerate_runs'], 'd')} | "
                f"{opt(r['acceptance_rate'], '.2f')} |"
            )
        lines.append("")
    md.write_text("\n".join(lines))


if __name__ == "__main__":
    main()
