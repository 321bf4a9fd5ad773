"""Every sampler on a real model: Gemma 3 270M (base) on 3-shot single-digit arithmetic, both engines.

    python -m trl_power model gemma-3-270m --output_dir models/gemma-3-270m
    python benchmarks/real_model.py --model_dir models/gemma-3-270m --out benchmarks/results/real_model.md   # ~1 h
    python benchmarks/real_model.py --model_dir models/gemma-3-270m --short                              # make demo-real

Task: `trl_power.tasks.arithmetic.FewShotArithmetic`, its 64 held-out prompts (`--prompts`), answers ended by the stop
string "\\n", at most 6 new tokens. alpha = 4 for every power method and for low temperature (T = 1/alpha). Methods,
N = `--budget` (16) the token budget in answers: plain (T = 1), greedy, low temperature, MH (one block,
`--mh_steps` proposals), SMC and SIR with N particles (SMC at the engine's default `resample_interval`), lookahead
(8 candidates x 4 rollouts), best-of-N by self-reward log p(y|x) and majority vote@N over N plain answers
(`trl_power.evaluation.best_of_n` / `majority_vote`). Each sampled method draws `--samples` answers per prompt
(independent runs); accuracy is the mean over prompts of the per-prompt mean, with
its standard error. Paired comparisons (`trl_power.evaluation.paired_test`: per-prompt differences, t-interval,
sign-flip p-value) against plain and against low temperature. Cost: tokens forwarded per answer (prefill + decode +
scoring, as `stats` counts them) and wall seconds per answer, the engine already started and warmed up.

The vLLM engine is `trl_power.load_vllm(model_dir, dtype="float32")`; it runs its worker in another process, so wall
time is the honest measure (the machine should be idle).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from pathlib import Path

import numpy as np
import torch

from trl_power import PowerSampler, PowerSamplingConfig
from trl_power.evaluation import best_of_n, group_by_prompt, majority_vote, paired_test
from trl_power.tasks.arithmetic import FewShotArithmetic

ALPHA = 4.0
TASK = FewShotArithmetic()


def method_configs(args: argparse.Namespace) -> dict[str, dict]:
    n = args.budget
    methods = {
        "plain": dict(method="plain"),
        "greedy": dict(method="greedy"),
        "low temperature": dict(method="low_temperature"),
        f"MH ({args.mh_steps} steps)": dict(method="mh", mcmc_steps=args.mh_steps, block_size=6),
        f"SMC-{n}": dict(method="smc", num_particles=n),
        f"SIR-{n}": dict(method="sir", num_particles=n),
        "lookahead (8x4)": dict(method="lookahead", lookahead_candidates=8, lookahead_rollouts=4),
    }
    if args.short:
        methods = {
            k: v for k, v in methods.items() if k in ("plain", "greedy", "low temperature", f"SMC-{n}")
        }
    return methods


def load_engine(engine: str, model_dir: str):
    if engine == "vllm":
        from trl_power import load_vllm

        return load_vllm(model_dir, dtype="float32", max_model_len=256), None
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    return model, AutoTokenizer.from_pretrained(model_dir)


def run(model, tokenizer, prompts, samples: int, seed: int, **settings):
    config = PowerSamplingConfig(
        alpha=ALPHA,
        max_new_tokens=TASK.max_new_tokens,
        stop_strings=list(TASK.stop_strings),
        num_samples_per_prompt=samples,
        batch_size=256,
        seed=seed,
        **settings,
    )
    start = time.perf_counter()
    out = PowerSampler(model, tokenizer, config).sample(prompts)
    return out, time.perf_counter() - start


def per_prompt(values, out, num_prompts):
    return group_by_prompt(list(values), out.prompt_indices, num_prompts)


def bench_engine(engine: str, args: argparse.Namespace, task: FewShotArithmetic, prompts: list[str]) -> dict:
    model, tokenizer = load_engine(engine, args.model_dir)
    run(model, tokenizer, prompts[:2], 1, 99, method="plain")  # warm-up
    P, rows = len(prompts), {}
    for name, settings in method_configs(args).items():
        samples = 1 if settings["method"] == "greedy" else args.samples
        out, wall = run(model, tokenizer, prompts, samples, args.seed, **settings)
        rewards = task.rewards([prompts[i] for i in out.prompt_indices], out.completions)
        rows[name] = dict(
            rewards=per_prompt(rewards, out, P),
            tokens=out.stats["tokens_forwarded"] / len(out),
            seconds=wall / len(out),
            finished=float(np.mean(out.finished)),
        )
        print(f"[{engine}] {name}: {np.mean(rewards):.3f} ({wall:.0f} s)", flush=True)
    n = args.budget
    out, wall = run(model, tokenizer, prompts, n * args.samples, args.seed + 1, method="plain")
    rewards = task.rewards([prompts[i] for i in out.prompt_indices], out.completions)
    answers = [task.extract_answer(c) for c in out.completions]
    cost = dict(
        tokens=n * out.stats["tokens_forwarded"] / len(out), seconds=n * wall / len(out), finished=1.0
    )
    rows[f"best-of-{n} (self-reward)"] = dict(
        rewards=best_of_n(per_prompt(rewards, out, P), per_prompt(out.base_logprobs, out, P), n), **cost
    )
    rows[f"majority@{n}"] = dict(
        rewards=majority_vote(per_prompt(answers, out, P), per_prompt(rewards, out, P), n), **cost
    )
    print(f"[{engine}] best-of-{n} / majority@{n} from {len(out)} plain answers ({wall:.0f} s)", flush=True)
    del model
    return rows


def table(rows: dict) -> str:
    head = "| method | accuracy | vs plain: diff [95% CI], p | vs low temperature: diff [95% CI], p | tokens/answer | s/answer |"
    lines = [head, "|---|---|---|---|---|---|"]
    for name, row in rows.items():
        acc = np.array([np.mean(g) for g in row["rewards"]])
        cells = [name, f"{acc.mean():.3f} ± {acc.std(ddof=1) / np.sqrt(acc.size):.3f}"]
        for ref in ("plain", "low temperature"):
            if name == ref or ref not in rows:
                cells.append("-")
                continue
            c = paired_test(row["rewards"], rows[ref]["rewards"])
            cells.append(f"{c.mean_difference:+.3f} [{c.ci[0]:+.3f}, {c.ci[1]:+.3f}], p={c.p_value:.3f}")
        cells += [f"{row['tokens']:.0f}", f"{row['seconds']:.3f}"]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--model_dir", required=True)
    parser.add_argument(
        "--engines", nargs="+", default=["transformers", "vllm"], choices=["transformers", "vllm"]
    )
    parser.add_argument("--prompts", type=int, default=64, help="held-out prompts (at most 64)")
    parser.add_argument("--samples", type=int, default=4, help="answers per prompt of each sampled method")
    parser.add_argument(
        "--vllm_samples",
        type=int,
        default=1,
        help="the same on vLLM (one CPU core there: 1 keeps it ~20 min)",
    )
    parser.add_argument(
        "--budget", type=int, default=16, help="N: particles of SMC/SIR, answers of best-of/majority"
    )
    parser.add_argument("--mh_steps", type=int, default=10)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--short", action="store_true", help="16 prompts, 2 samples, plain/greedy/low-T/SMC, transformers"
    )
    parser.add_argument(
        "--out", default=None, help="write the tables (Markdown) and the raw numbers (JSON) here"
    )
    args = parser.parse_args()
    if args.short:
        args.prompts, args.samples, args.engines = 16, 2, ["transformers"]
    torch.set_num_threads(os.cpu_count() or 1)
    task = TASK
    prompts = task.prompts("eval", args.prompts)
    flags = sorted({f for f in ("avx2", "avx512f", "amx_tile") if f in Path("/proc/cpuinfo").read_text()})
    header = (
        f"Gemma 3 270M (base, float32), {len(prompts)} held-out 3-shot arithmetic prompts, alpha {ALPHA:g}, "
        f"budget N = {args.budget}; {platform.processor() or 'cpu'}, "
        f"{os.cpu_count()} cores, flags {', '.join(flags)}."
    )
    sections, raw = [header], {}
    for engine in args.engines:
        samples = args.vllm_samples if engine == "vllm" else args.samples
        rows = bench_engine(engine, argparse.Namespace(**{**vars(args), "samples": samples}), task, prompts)
        sections.append(f"\n### {engine} engine, {samples} answer(s) per prompt per method\n\n{table(rows)}")
        raw[engine] = rows
        text = "\n".join(sections) + "\n"
        print("\n" + text, flush=True)
        if args.out:  # after each engine: a later failure keeps what was measured
            Path(args.out).write_text(text)
            Path(args.out).with_suffix(".json").write_text(json.dumps(raw, indent=1))


if __name__ == "__main__":
    main()
