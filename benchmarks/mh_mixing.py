"""How MH's steps to reach p^alpha grow with the answer's length, on the Markov model of benchmarks/length.py.

    python benchmarks/mh_mixing.py --out benchmarks/results/mh_mixing.md

MH with one block (exact for p^4 over finished answers), tau 1, uniform cuts, from a first draw of the proposal; for
each horizon H and number of steps K, `--chains` independent chains: TV of their first-two-token law to p^4's (the
decision between the two cycles, which only a cut at the first position can change) beside an exact sampler's 95th
percentile with as many answers, and tokens forwarded per answer. "Steps to mix": the fewest K of the grid whose TV is
within that floor.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch

from trl_power import PowerSampler, PowerSamplingConfig
from trl_power.tiny_models import markov_log_transitions, markov_model, markov_power_law, two_cycle_logits

sys.path.insert(0, str(Path(__file__).parent))
from length import empirical, floor, tv  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="benchmarks/results/mh_mixing.md")
    parser.add_argument("--chains", type=int, default=100)
    parser.add_argument("--lengths", type=int, nargs="+", default=[16, 32, 64, 128])
    parser.add_argument("--steps", type=int, nargs="+", default=[10, 30, 100, 300])
    args = parser.parse_args()
    torch.set_num_threads(1)
    model = markov_model(two_cycle_logits())
    log_p = markov_log_transitions(model)
    rng = np.random.default_rng(0)
    lines = [
        f"# MH's steps to mix against the length (benchmarks/mh_mixing.py), {time.strftime('%Y-%m-%d')}, "
        f"{args.chains} chains per cell, one torch thread",
        "",
        "| H | p^4 mean length | floor | "
        + " | ".join(f"TV at {k} steps (tokens/answer)" for k in args.steps)
        + " | steps to mix |",
        "|---|---|---|" + "---|" * len(args.steps) + "---|",
    ]
    for H in args.lengths:
        law = markov_power_law(log_p, 9, 4.0, H)
        bound = floor(law["prefix"], args.chains, rng)
        cells, mixed = [], None
        for k in args.steps:
            config = PowerSamplingConfig(
                method="mh", alpha=4.0, max_new_tokens=H, block_size=H, mcmc_steps=k,
                num_samples_per_prompt=args.chains, batch_size=args.chains, seed=0,
            )  # fmt: skip
            out = PowerSampler(model, None, config).sample([[9]])
            d = tv(empirical(tuple(y[:2]) for y in out.completion_ids), law["prefix"])
            cells.append(f"{d:.3f} ({out.stats['tokens_forwarded'] / args.chains:.0f})")
            if mixed is None and d <= bound:
                mixed = k
            print(H, k, round(d, 3), flush=True)
        lines.append(
            f"| {H} | {law['mean_length']:.1f} | {bound:.3f} | "
            + " | ".join(cells)
            + f" | {mixed or '> ' + str(k)} |"
        )
    Path(args.out).write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
