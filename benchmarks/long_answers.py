"""Long answers on a real model: Gemma 3 270M (base) counting up from a 3-digit number, answers of ~32-256 tokens.

    python -m trl_power model gemma-3-270m --output_dir models/gemma-3-270m
    python benchmarks/long_answers.py --model_dir models/gemma-3-270m --out benchmarks/results/long_answers

Task (`CountingTask`): two solved examples "Count from 623 to 672: 623, 624, ..., 672" (each of about the asked
length), then "Count from a to b:"; the answer is " a, a+1, ..., b", ended by the stop string "\\n". A 3-digit number
and its ", " are 5 tokens, so n numbers are ~5n tokens: `--lengths 6 19 51` gives answers of ~32, ~96 and ~256 tokens.
Reward 1 when the whole answer (whitespace stripped) is exactly the sequence: every number right and it stops at b.
Self-reward log p(y|x) (`PowerSamplingOutput.base_logprobs`) and per-token log p are measured for every answer.

Methods, alpha = 4: plain (T = 1), greedy, low temperature (T = 1/alpha), MH (one block, `--mh_steps` proposals;
with `--mh_defaults_upto`, also MH at its defaults where the answers are that short), SMC and SIR with N =
`--particles`, and N plain answers per prompt decoded together (`num_samples_per_prompt=N`; the cost bar of SMC/SIR,
run just before them in the same process; also best-of-N by self-reward). Every cell is appended to `<out>.jsonl` as
it completes; a rerun skips the cells already there (`--report_only` rebuilds the tables and the plot from it).

Cost per answer: `stats["tokens_forwarded"]`, wall seconds (the engine loaded and warmed up), and peak memory: the
resident set (RSS) of this process and its children (vLLM's engine core) sampled every 20 ms with psutil, the peak
during the cell minus the RSS when it started. On vLLM, every generate call's prompt tokens, and how many of them
vLLM served from its prefix cache (`RequestOutput.num_cached_tokens`), are counted by wrapping `LLM.generate`.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import platform
import random
import threading
import time
from pathlib import Path

import numpy as np
import torch

from trl_power import PowerSampler, PowerSamplingConfig
from trl_power.evaluation import group_by_prompt, paired_test

ALPHA = 4.0


class CountingTask:
    """Count up from a to b (3-digit numbers); two solved examples of about the same length in the prompt."""

    stop_strings = ("\n",)

    def __init__(self, numbers: int, num_prompts: int, seed: int = 0):
        rng = random.Random(seed)
        self.numbers = numbers
        self.items = [self._make(rng) for _ in range(num_prompts)]

    def _make(self, rng: random.Random) -> tuple[str, str]:
        n = self.numbers
        shots = []
        for _ in range(2):
            m = rng.randint(max(3, n - 3), n + 3)
            a = rng.randint(100, 999 - (m - 1))
            xs = list(range(a, a + m))
            shots.append(f"Count from {xs[0]} to {xs[-1]}: {', '.join(map(str, xs))}")
        a = rng.randint(100, 999 - (n - 1))
        xs = list(range(a, a + n))
        return "\n".join([*shots, f"Count from {xs[0]} to {xs[-1]}:"]), " " + ", ".join(map(str, xs))

    @property
    def prompts(self) -> list[str]:
        return [p for p, _ in self.items]

    @property
    def max_new_tokens(self) -> int:
        return math.ceil(1.25 * (5 * self.numbers + 1)) + 8  # room for a wrong answer to run past b

    def rewards(self, prompt_indices, completions) -> list[float]:
        return [float(c.strip() == self.items[i][1].strip()) for i, c in zip(prompt_indices, completions)]


def method_configs(args: argparse.Namespace, numbers: int) -> dict[str, dict]:
    n = args.particles
    methods = {
        "plain": dict(method="plain"),
        "greedy": dict(method="greedy"),
        "low temperature": dict(method="low_temperature"),
        f"MH (1 block, {args.mh_steps} steps)": dict(method="mh", mcmc_steps=args.mh_steps, one_block=True),
        f"{n} plain together": dict(method="plain", num_samples_per_prompt=n, seed_offset=1),
        f"SMC-{n}": dict(method="smc", num_particles=n),
        f"SIR-{n}": dict(method="sir", num_particles=n),
    }
    if numbers <= args.mh_defaults_upto:
        methods["MH (defaults)"] = dict(method="mh")
    for i in args.smc_intervals:  # SMC at a set resample_interval (the cells above: the engine's default)
        methods[f"SMC-{n} interval {i}"] = dict(method="smc", num_particles=n, resample_interval=i)
    return methods


class PeakRSS:
    """Peak resident set of this process and its children, sampled in a thread."""

    def __init__(self, interval: float = 0.02):
        import psutil

        self.proc, self.interval = psutil.Process(), interval

    def rss(self) -> int:
        total = 0
        for p in [self.proc, *self.proc.children(recursive=True)]:
            with contextlib.suppress(Exception):  # a child that just exited
                total += p.memory_info().rss
        return total

    def __enter__(self):
        self.start = self.peak = self.rss()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    def _run(self):
        while not self._stop.wait(self.interval):
            self.peak = max(self.peak, self.rss())

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, self.rss())


class GenerateCounter:
    """Wraps `LLM.generate` of one engine: calls, requests, prompt tokens, prompt tokens served from the cache."""

    def __init__(self, llm):
        self.llm, self.inner = llm, llm.generate
        self.reset()
        llm.generate = self

    def reset(self):
        self.calls = self.requests = self.prompt_tokens = self.cached_tokens = 0
        self.cached_unknown = 0

    def __call__(self, *a, **k):
        outs = self.inner(*a, **k)
        self.calls += 1
        for o in outs:
            self.requests += 1
            self.prompt_tokens += len(o.prompt_token_ids or [])
            if o.num_cached_tokens is None:
                self.cached_unknown += 1
            else:
                self.cached_tokens += int(o.num_cached_tokens)
        return outs


def load_engine(engine: str, model_dir: str, kv_gib: float):
    if engine == "vllm":
        from trl_power import load_vllm

        llm = load_vllm(
            model_dir, dtype="float32", max_model_len=1024, kv_cache_memory_bytes=int(kv_gib * (1 << 30))
        )
        return llm, None, GenerateCounter(llm)
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    return model, AutoTokenizer.from_pretrained(model_dir), None


def run_cell(model, tokenizer, counter, task: CountingTask, args, settings: dict) -> dict:
    settings = dict(settings)
    seed = args.seed + settings.pop("seed_offset", 0)
    if settings.pop("one_block", False):
        settings["block_size"] = task.max_new_tokens
    samples = settings.pop("num_samples_per_prompt", 1)
    config = PowerSamplingConfig(
        alpha=ALPHA,
        max_new_tokens=task.max_new_tokens,
        stop_strings=list(task.stop_strings),
        num_samples_per_prompt=samples,
        batch_size=1024,
        seed=seed,
        **settings,
    )
    sampler = PowerSampler(model, tokenizer, config)
    if counter is not None:
        counter.reset()
    with PeakRSS() as mem:
        start = time.perf_counter()
        out = sampler.sample(task.prompts)
        wall = time.perf_counter() - start
    P, rows = len(task.prompts), len(out)
    lengths = [len(x) for x in out.completion_ids]
    keep = (
        "tokens_forwarded",
        "prefill_tokens",
        "decode_tokens",
        "scoring_tokens",
        "acceptance_rate",
        "mh_attempts",
        "resample_count",
        "mean_ess",
        "final_ess",
        "degenerate_runs",
        "runs_without_finished",
    )
    cell = dict(
        settings={k: v for k, v in config.to_dict().items() if k not in ("show_progress",)},
        answers=rows,
        rewards=group_by_prompt(task.rewards(out.prompt_indices, out.completions), out.prompt_indices, P),
        logp=group_by_prompt(list(out.base_logprobs), out.prompt_indices, P),
        logp_tok=group_by_prompt(
            [lp / max(1, n) for lp, n in zip(out.base_logprobs, lengths)], out.prompt_indices, P
        ),
        lengths=group_by_prompt(lengths, out.prompt_indices, P),
        finished=float(np.mean(out.finished)),
        wall=wall,
        peak_rss_mb=(mem.peak - mem.start) / 2**20,
        rss_mb=mem.peak / 2**20,
        stats={k: out.stats[k] for k in keep if k in out.stats},
        example=out.completions[0][-80:],
    )
    if counter is not None:
        cell["vllm_generate"] = dict(
            calls=counter.calls,
            requests=counter.requests,
            prompt_tokens=counter.prompt_tokens,
            cached_tokens=counter.cached_tokens,
            cached_unknown=counter.cached_unknown,
        )
    return cell


def load_cells(path: Path) -> dict[tuple, dict]:
    cells = {}
    if path.exists():
        for line in path.read_text().splitlines():
            if line.strip():
                c = json.loads(line)
                cells[(c["engine"], c["numbers"], c["method"])] = c
    return cells


def prompts_for(args: argparse.Namespace, numbers: int) -> int:
    """Prompts at this length: `--prompts`, or a `--prompts_at numbers:prompts` override (the first P of the same
    prompts)."""
    return dict(tuple(map(int, x.split(":"))) for x in args.prompts_at).get(numbers, args.prompts)


def bench(args) -> None:
    jsonl = Path(args.out + ".jsonl")
    done = load_cells(jsonl)
    vllm_methods = args.vllm_methods or ["plain", f"{args.particles} plain", "SMC", "SIR"]
    for engine in args.engines:
        lengths = args.vllm_lengths if engine == "vllm" else args.lengths
        todo = [
            (n, name, s)
            for n in lengths
            for name, s in method_configs(args, n).items()
            if (engine, n, name) not in done
            and (engine != "vllm" or any(name.startswith(m) for m in vllm_methods))
            and (not args.only or any(name.startswith(m) for m in args.only))
        ]
        if not todo:
            continue
        model, tokenizer, counter = load_engine(engine, args.model_dir, args.vllm_kv_gib)
        warm = CountingTask(3, 2, seed=99)
        run_cell(model, tokenizer, counter, warm, args, dict(method="plain"))  # warm-up
        for n, name, settings in todo:
            task = CountingTask(n, prompts_for(args, n), seed=args.seed)
            cell = run_cell(model, tokenizer, counter, task, args, settings)
            cell.update(engine=engine, numbers=n, method=name, date=time.strftime("%Y-%m-%d %H:%M"))
            with jsonl.open("a") as f:
                f.write(json.dumps(cell) + "\n")
            acc = np.mean([np.mean(g) for g in cell["rewards"]])
            print(
                f"[{engine}] n={n} {name}: acc {acc:.3f}, log p {np.mean([np.mean(g) for g in cell['logp']]):.2f}, "
                f"len {np.mean([np.mean(g) for g in cell['lengths']]):.0f}, {cell['wall']:.0f} s, "
                f"{cell['stats']['tokens_forwarded'] / cell['answers']:.0f} tok/answer",
                flush=True,
            )
        del model


def mean_se(groups) -> tuple[float, float]:
    x = np.array([np.mean(g) for g in groups])
    return float(x.mean()), float(x.std(ddof=1) / np.sqrt(x.size))


def pooled(a: dict, b: dict | None, key: str):
    """Per-prompt answers of two plain cells together (the same method, other seeds)."""
    return a[key] if b is None else [list(x) + list(y) for x, y in zip(a[key], b[key])]


def diff(cell, ref, key: str, fmt: str) -> str:
    if ref is None or cell is ref:
        return "-"
    c = paired_test(cell[key], ref[key])
    return f"{c.mean_difference:+{fmt}} [{c.ci[0]:+{fmt}}, {c.ci[1]:+{fmt}}]"


def best_of(cell: dict) -> dict:
    """Best-of-N by self-reward from the N plain answers of each prompt (one pick per prompt)."""
    pick = [int(np.argmax(lp)) for lp in cell["logp"]]
    out = {
        k: [[cell[k][i][j]] for i, j in enumerate(pick)] for k in ("rewards", "logp", "logp_tok", "lengths")
    }
    return dict(cell, **out, answers=len(pick))


def report(args) -> None:
    cells = load_cells(Path(args.out + ".jsonl"))
    flags = sorted({f for f in ("avx2", "avx512f", "amx_tile") if f in Path("/proc/cpuinfo").read_text()})
    text = [
        f"Gemma 3 270M (base, float32), counting task, alpha {ALPHA:g}, "
        f"N = {args.particles}; {platform.processor() or 'cpu'}, {os.cpu_count()} cores, flags {', '.join(flags)}. "
        "Timings taken on a shared machine (other jobs sometimes running). 'wall vs N plain': the cell's wall time over "
        "that of the N plain answers decoded together; SMC-N runs right after them (back to back, one process), the "
        "other rows are comparable only where they ran in the same process. Peak RSS: the peak over the cell minus "
        "the RSS at its start (process and children; memory an earlier cell freed but the allocator kept hides part "
        "of a peak; the absolute peak is `peak_rss_total_mb` in the JSON). Accuracy, log p: mean over prompts of the "
        "per-prompt mean ± standard error; 'vs': paired difference [95% t-interval] (`paired_test`); the plain "
        "reference pools the plain and the N plain answers.\n"
    ]
    raw = {}
    for engine in ("transformers", "vllm"):
        for n in sorted({k[1] for k in cells if k[0] == engine}):
            group = {k[2]: c for k, c in cells.items() if k[0] == engine and k[1] == n}
            nplain = next((m for m in group if m.endswith("plain together")), None)
            plain = group.get("plain")
            ref_plain = None
            if plain is not None:
                ref_plain = {
                    k: pooled(plain, group.get(nplain), k) for k in ("rewards", "logp", "logp_tok", "lengths")
                }
            lowt = group.get("low temperature")
            rows = dict(group)
            if nplain:
                rows[f"best-of-{args.particles} (self-reward)"] = best_of(group[nplain])
            text.append(
                f"\n### {engine} engine, {n} numbers, {len(next(iter(group.values()))['rewards'])} prompts (right answer "
                f"~{5 * n + 1} tokens with the stop token; "
                f"max_new_tokens {CountingTask(n, 1).max_new_tokens})\n"
            )
            text.append(
                "| method | answers | accuracy | vs plain | vs low temp. | log p(y) | vs plain | vs low temp. | "
                "log p / token | vs plain | vs low temp. |"
            )
            text.append("|---|---|---|---|---|---|---|---|---|---|---|")
            for name, c in rows.items():
                ref = None if name in ("plain", nplain) else dict(ref_plain, answers=0) if ref_plain else None
                lt = None if name == "low temperature" else lowt
                cells_txt = [name, str(c["answers"])]
                for key, fmt in (("rewards", ".3f"), ("logp", ".1f"), ("logp_tok", ".3f")):
                    m, se = mean_se(c[key])
                    cells_txt += [f"{m:{fmt}} ± {se:{fmt}}", diff(c, ref, key, fmt), diff(c, lt, key, fmt)]
                text.append("| " + " | ".join(cells_txt) + " |")
            text.append(
                "\n| method | mean length | finished | tokens/answer | s/answer | peak RSS MB (per answer) | "
                "wall vs N plain | diagnostics |"
            )
            text.append("|---|---|---|---|---|---|---|---|")
            for name, c in group.items():
                st = c["stats"]
                diag = []
                if "final_ess" in st:
                    diag.append(
                        f"final ESS {st['final_ess']:.2f}, degenerate {st['degenerate_runs']}/{len(c['rewards'])}"
                    )
                if "resample_count" in st:
                    diag.append(f"resamples {st['resample_count']}")
                if "acceptance_rate" in st:
                    diag.append(f"accept {st['acceptance_rate']:.2f} of {st['mh_attempts']}")
                    B = c["settings"]["block_size"] or math.ceil(c["settings"]["max_new_tokens"] / 16)
                    S = c["settings"]["mcmc_steps"]
                    Ls = [x for g in c["lengths"] for x in g]
                    f = np.mean([L + S * B * math.ceil(L / B) * (math.ceil(L / B) + 1) / 4 for L in Ls])
                    diag.append(
                        f"formula L+SBK(K+1)/4 {f:.0f} vs decode+scoring "
                        f"{(st['decode_tokens'] + st['scoring_tokens']) / c['answers']:.0f}"
                    )
                if "vllm_generate" in c:
                    g = c["vllm_generate"]
                    diag.append(
                        f"{g['calls']} generate calls, prompt tokens {g['prompt_tokens']} of which cached "
                        f"{g['cached_tokens']}"
                        + (f" ({g['cached_unknown']} unknown)" if g["cached_unknown"] else "")
                    )
                ratio = "-"
                if nplain and name != nplain and c["answers"] == len(c["rewards"]):
                    ratio = f"{c['wall'] / group[nplain]['wall']:.2f}x"
                text.append(
                    f"| {name} | {np.mean([np.mean(g) for g in c['lengths']]):.0f} | {c['finished']:.2f} | "
                    f"{st['tokens_forwarded'] / c['answers']:.0f} | {c['wall'] / c['answers']:.3f} | "
                    f"{c['peak_rss_mb']:.0f} ({c['peak_rss_mb'] / c['answers']:.1f}) | {ratio} | "
                    f"{'; '.join(diag)} |"
                )
            raw.setdefault(engine, {})[str(n)] = {
                name: {
                    "accuracy": mean_se(c["rewards"]),
                    "logp": mean_se(c["logp"]),
                    "logp_per_token": mean_se(c["logp_tok"]),
                    "mean_length": float(np.mean([np.mean(g) for g in c["lengths"]])),
                    "finished": c["finished"],
                    "tokens_per_answer": c["stats"]["tokens_forwarded"] / c["answers"],
                    "seconds_per_answer": c["wall"] / c["answers"],
                    "wall": c["wall"],
                    "peak_rss_mb": c["peak_rss_mb"],
                    "peak_rss_total_mb": c["rss_mb"],
                    "stats": c["stats"],
                    **({"vllm_generate": c["vllm_generate"]} if "vllm_generate" in c else {}),
                }
                for name, c in group.items()
            }
    Path(args.out + ".md").write_text("\n".join(text) + "\n")
    Path(args.out + ".json").write_text(json.dumps(raw, indent=1))
    print("\n".join(text))
    plot(raw, args.out + ".png")


def plot(raw: dict, path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(12, 4.8))
    for engine, style in (("transformers", "-o"), ("vllm", "--s")):
        methods = sorted({m for per in raw.get(engine, {}).values() for m in per})
        for m in methods:
            pts = sorted(
                (v[m]["mean_length"], v[m]["tokens_per_answer"], v[m]["seconds_per_answer"])
                for v in raw[engine].values()
                if m in v
            )
            if not pts:
                continue
            x, tok, sec = zip(*pts)
            axes[0].plot(x, tok, style, label=f"{m} ({engine})")
            axes[1].plot(x, sec, style, label=f"{m} ({engine})")
    for ax, ylabel in zip(axes, ("tokens forwarded per answer", "wall seconds per answer")):
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel("mean answer length (tokens)")
        ax.set_ylabel(ylabel)
        ax.grid(True, which="both", alpha=0.3)
    axes[1].legend(fontsize=6, ncol=2)
    fig.suptitle("Gemma 3 270M, counting task: cost against answer length (alpha 4)")
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--model_dir", required=True)
    parser.add_argument(
        "--engines", nargs="+", default=["transformers", "vllm"], choices=["transformers", "vllm"]
    )
    parser.add_argument("--lengths", type=int, nargs="+", default=[6, 19, 51], help="numbers per answer")
    parser.add_argument("--vllm_lengths", type=int, nargs="+", default=[51])
    parser.add_argument(
        "--vllm_methods",
        nargs="+",
        default=None,
        help="name prefixes run on vLLM (default: plain, N plain, SMC, SIR)",
    )
    parser.add_argument("--only", nargs="*", default=None, help="run only methods with these name prefixes")
    parser.add_argument("--prompts", type=int, default=16, help="prompts per length")
    parser.add_argument("--prompts_at", nargs="*", default=[], help="per-length overrides, e.g. 51:8")
    parser.add_argument(
        "--particles", type=int, default=8, help="N: SMC/SIR particles, plain answers together"
    )
    parser.add_argument("--mh_steps", type=int, default=2)
    parser.add_argument(
        "--smc_intervals", type=int, nargs="*", default=[], help="also SMC at these resample intervals"
    )
    parser.add_argument(
        "--mh_defaults_upto", type=int, default=0, help="MH at its defaults up to this length"
    )
    parser.add_argument("--vllm_kv_gib", type=float, default=3.0)
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--report_only", action="store_true")
    parser.add_argument(
        "--out", default="benchmarks/results/long_answers", help="path stem: .jsonl .md .json .png"
    )
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    if not args.report_only:
        bench(args)
    report(args)


if __name__ == "__main__":
    main()
