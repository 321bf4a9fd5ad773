"""SMC's `resample_interval` against accuracy and cost on Gemma 3 270M (3-shot arithmetic), on both engines: the
measurement behind the engines' defaults (`TransformersEngine.resample_interval`, `VLLM_RESAMPLE_INTERVAL`).

    python benchmarks/smc_interval.py --model_dir models/gemma-3-270m --out benchmarks/results/smc_interval.md

For each interval (1, 2, 4 tokens, and 32, more than any answer of this task has, so one extension per run),
SMC with N = 16 particles at alpha 4 on the 64 held-out prompts, `--samples` runs per prompt: accuracy (mean over
prompts, standard error), generate calls per batch of runs (vLLM; 64 runs of 16 particles share each call), tokens
forwarded and wall seconds per answer;
beside them N plain answers per prompt on the same engine (the cost SMC is held to: at most 1.5x their wall time).
SMC's target does not depend on the interval or the engine (both are exact for p^alpha over finished answers,
tests/test_sampling_exactness.py, tests/test_vllm_engine.py); the interval changes the variance of the weights and
the cost.
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

import numpy as np
import torch

from trl_power import PowerSampler, PowerSamplingConfig
from trl_power.evaluation import group_by_prompt
from trl_power.tasks.arithmetic import FewShotArithmetic

INTERVALS = (1, 2, 4, 32)


def measure(model, tokenizer, prompts, task, calls, **settings) -> dict:
    config = PowerSamplingConfig(
        alpha=4.0,
        max_new_tokens=task.max_new_tokens,
        stop_strings=list(task.stop_strings),
        batch_size=1024,
        seed=0,
        **settings,
    )
    calls["n"] = 0
    start = time.perf_counter()
    out = PowerSampler(model, tokenizer, config).sample(prompts)
    wall = time.perf_counter() - start
    rewards = task.rewards([prompts[i] for i in out.prompt_indices], out.completions)
    acc = np.array([np.mean(g) for g in group_by_prompt(rewards, out.prompt_indices, len(prompts))])
    return dict(
        accuracy=acc.mean(),
        stderr=acc.std(ddof=1) / np.sqrt(acc.size),
        calls_per_batch=calls["n"] / np.ceil(len(out) / config.runs_per_batch),
        tokens=out.stats["tokens_forwarded"] / len(out),
        wall=wall,
        answers=len(out),
    )


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--model_dir", required=True)
    parser.add_argument("--engines", nargs="+", default=["transformers", "vllm"])
    parser.add_argument("--samples", type=int, default=4, help="SMC runs per prompt (transformers engine)")
    parser.add_argument("--vllm_samples", type=int, default=1, help="SMC runs per prompt (vLLM engine)")
    parser.add_argument("--particles", type=int, default=16)
    parser.add_argument("--out", default=None)
    args = parser.parse_args()
    torch.set_num_threads(os.cpu_count() or 1)
    task = FewShotArithmetic()
    prompts = task.prompts("eval")
    lines = []
    for engine in args.engines:
        calls = {"n": 0}
        if engine == "vllm":
            from trl_power import load_vllm

            model, tokenizer = load_vllm(args.model_dir, dtype="float32", max_model_len=256), None
            generate = model.generate

            def counted(*a, _generate=generate, _calls=calls, **k):
                _calls["n"] += 1
                return _generate(*a, **k)

            model.generate = counted
            samples = args.vllm_samples
        else:
            from transformers import AutoModelForCausalLM, AutoTokenizer

            model = AutoModelForCausalLM.from_pretrained(args.model_dir, dtype=torch.float32).eval()
            tokenizer = AutoTokenizer.from_pretrained(args.model_dir)
            samples = args.samples
        measure(
            model, tokenizer, prompts[:2], task, calls, method="plain", num_samples_per_prompt=1
        )  # warm-up
        N = args.particles
        plain = measure(
            model, tokenizer, prompts, task, calls, method="plain", num_samples_per_prompt=N * samples
        )
        lines += [
            f"\n### {engine} engine: SMC-{N}, {samples} run(s) per prompt; {N} plain answers per run as the cost bar\n",
            "| resample_interval | accuracy | generate calls per batch | tokens/answer | s/answer | wall vs N plain |",
            "|---|---|---|---|---|---|",
        ]
        plain_wall_per_run = plain["wall"] / (len(prompts) * samples)
        lines.append(
            f"| ({N} plain answers) | {plain['accuracy']:.3f} ± {plain['stderr']:.3f} (plain) | "
            f"{plain['calls_per_batch']:.2f} | {plain['tokens'] * N:.0f} | {plain_wall_per_run:.3f} | 1.00 |"
        )
        for interval in INTERVALS:
            row = measure(
                model, tokenizer, prompts, task, calls, method="smc", num_particles=N,
                resample_interval=interval, num_samples_per_prompt=samples,
            )  # fmt: skip
            per_run = row["wall"] / row["answers"]
            lines.append(
                f"| {interval} | {row['accuracy']:.3f} ± {row['stderr']:.3f} | {row['calls_per_batch']:.2f} | "
                f"{row['tokens']:.0f} | {per_run:.3f} | {per_run / plain_wall_per_run:.2f} |"
            )
            print(lines[-1], flush=True)
        del model
    text = "\n".join(lines) + "\n"
    print(text)
    if args.out:
        Path(args.out).write_text(text)


if __name__ == "__main__":
    main()
