"""Every power sampler and setting side by side, at the tokens each forwards: the measurements behind the defaults.

    python benchmarks/frontier.py --out benchmarks/results/frontier.md             # CPU, transformers engine
    python benchmarks/frontier.py --engines transformers vllm --parts a            # (a) on both engines
    python benchmarks/frontier.py --parts a --models trap --mh_steps 60 100 --only 0.8/   # MH with more steps
    python benchmarks/frontier.py --quick                                           # seconds, numbers meaningless

(a) Enumerable models, alpha 4, finished-only target: two random ones (vocab 5, 3 new tokens) and a family of
    trap-shaped ones (`trl_power.tiny_models.trap_target`: a heavy first token with many weak continuations against a
    light one with a single strong continuation; heavy/strong = 0.6/0.9, 0.8/0.9, 0.8/0.6, the decision at position
    0 or 1). Each model is a tiny Llama (head size 32, so that vLLM's CPU kernels serve it too) fitted to the shape;
    the exact p_4 is enumerated from the fitted model itself. Per method and setting, `--runs` independent answers:
    TV to p_4 minus the noise floor (the mean TV of as many exact draws, simulated), accuracy P(answer = the strong
    sequence) next to p_4's, tokens forwarded and wall seconds per answer. Best-of-N by self-reward and majority
    vote@N (plain samples at temperature 1) are scored at their own tokens.
(b) The embedded tasks (aligned, misaligned): accuracy, self-reward, tokens and seconds per answer at each method's
    default and the frontier settings, best-of-N and majority vote@N, and paired tests (`trl_power.evaluation.
    paired_test`) of each method against plain sampling and against MH at its default.
(c) Batch size: wall seconds for 2000 MH answers on a vocab-4, 3-token model (alpha 3, one block, 30 steps) at
    batch 8 ... 256.
"""

from __future__ import annotations

import argparse
import platform
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from trl_power import PowerSampler, PowerSamplingConfig, exact_power_distribution
from trl_power.evaluation import best_of_n, group_by_prompt, majority_vote, paired_test
from trl_power.theory import empirical_distribution, total_variation
from trl_power.tiny_models import (
    all_completions,
    build_model,
    build_tokenizer,
    fit_to_distribution,
    trap_answer,
    trap_target,
)

ALPHA = 4.0
WORDS = ["a", "b", "c", "q"]  # ids 1..4 after <eos> = 0; 4 is the prompt
TRAPS = [(0.6, 0.9), (0.8, 0.9), (0.8, 0.6)]  # (heavy, strong)


def enumerable_models(quick: bool, which: str = "all", only: str | None = None) -> dict[str, dict]:
    """{name: {model, max_new_tokens, strong, fit}}; strong = the trap's answer (None for random models); fit = how
    well the fitted model matches its trap (KL(target || model), p_4(strong) of the target and of the model)."""
    shape = dict(arch="llama", hidden_size=64, num_heads=2, max_position_embeddings=32)
    out = {}
    for seed in () if which == "trap" else (3, 5)[: 1 if quick else 2]:
        if only and only not in f"random s{seed}":
            continue
        # random: fitted to a Dirichlet(0.5) draw over every completion of <= 3 tokens (a random init of this shape
        # almost never emits EOS, which leaves the finished target out of reach of any proposal)
        comps = all_completions(5, 0, 3)
        law = np.random.default_rng(seed).dirichlet(np.full(len(comps), 0.5))
        model = fit_to_distribution(
            build_model(5, seed=seed, **shape), [4], dict(zip(comps, law)), steps=30 if quick else 300
        )
        out[f"random s{seed}"] = dict(model=model, max_new_tokens=3, strong=None, fit=None)
    for heavy, strong in () if which == "random" else TRAPS[: 1 if quick else 3]:
        for d in (0, 1):
            if only and only not in f"trap {heavy}/{strong} d{d}":
                continue
            # 1000 Adam steps at lr 3e-3: 300 at 3e-2 left the 0.8/0.6 trap at KL 0.56 with p_4(strong) 0.0005 instead
            # of 1.0, and 3e-2 diverges at d = 1 (KL 1.3-2.3); 1000 at 3e-3 fits every trap (KL 0.011-0.036)
            T = d + 3
            target = trap_target(max_new_tokens=T, heavy=heavy, strong=strong, decision_position=d)
            model = fit_to_distribution(
                build_model(5, seed=0, **shape), [4], target, steps=30 if quick else 1000, lr=3e-3
            )
            out[f"trap {heavy}/{strong} d{d}"] = dict(
                model=model, max_new_tokens=T, strong=trap_answer(0, d), fit=_fit(model, target, T, d)
            )
    return out


def _fit(model, target: dict, T: int, d: int) -> str:
    """KL(target || model) and p_4(strong) of the target's finished answers against the fitted model's."""
    from trl_power.sampling.exact import exact_sequence_logprobs

    logprobs, _ = exact_sequence_logprobs(model, None, [4], T)
    kl = sum(v * (np.log(v) - logprobs[k]) for k, v in target.items())
    finished = {k: v**ALPHA for k, v in target.items() if k[-1] == 0}
    want = finished[trap_answer(0, d)] / sum(finished.values())
    got = exact_power_distribution(model, None, [4], ALPHA, T).get(trap_answer(0, d), 0.0)
    return f"KL(target || model) {kl:.3f}, p_4(strong answer): target {want:.3f}, model {got:.3f}"


def settings(quick: bool) -> list[tuple[str, str, dict]]:
    """(method, label, PowerSamplingConfig overrides). Budgets: MH 10/30 steps (default block schedule, and one block),
    SMC 8/16/32 particles, SIR 16, lookahead M 4/16 rollouts."""
    out = [("temperature", "T=1", {}), ("low_temperature", "T=1/alpha", {})]
    for tau in (None, 0.5, 1.0):
        t = "1/a" if tau is None else f"{tau:g}"
        for steps in (10, 30):
            for cut in ("uniform", "entropy"):
                kw = dict(proposal_temperature=tau, mcmc_steps=steps, mh_cut=cut)
                out.append(("mh", f"tau {t}, {steps} steps, {cut} cuts", kw))
        out.append(
            (
                "mh",
                f"tau {t}, 30 steps, one block",
                dict(proposal_temperature=tau, mcmc_steps=30, block_size=-1),
            )
        )
        out.append(("smc", f"tau {t}, N 16", dict(proposal_temperature=tau, num_particles=16)))
        out.append(
            (
                "smc",
                f"tau {t}, N 16, annealed",
                dict(proposal_temperature=tau, num_particles=16, anneal_tokens=-1),
            )
        )
        if tau is not None:
            for n in (8, 32):
                out.append(("smc", f"tau {t}, N {n}", dict(proposal_temperature=tau, num_particles=n)))
        out.append(("sir", f"tau {t}, N 16", dict(proposal_temperature=tau, num_particles=16)))
    out.append(("lookahead", "K 8, M 4, H 16", {}))
    out.append(("lookahead", "K 8, M 16, H 16", dict(lookahead_rollouts=16)))
    return out[:7] if quick else out


def resolve(kw: dict, T: int) -> dict:
    """-1 placeholders: anneal over / one block of the whole max_new_tokens."""
    kw = dict(kw)
    if kw.get("anneal_tokens") == -1:
        kw["anneal_tokens"] = T
    if kw.get("block_size") == -1:
        kw["block_size"] = T
    return kw


def noise_floor(exact: dict, n: int, reps: int = 200, seed: int = 0) -> float:
    """Mean TV between p and the empirical law of n iid draws from p."""
    rng = np.random.default_rng(seed)
    keys = list(exact)
    p = np.array([exact[k] for k in keys])
    return float(np.mean([0.5 * np.abs(rng.multinomial(n, p) / n - p).sum() for _ in range(reps)]))


def run_sampler(model, tokenizer, prompts, cfg) -> tuple:
    sampler = PowerSampler(model, tokenizer, cfg)
    start = time.perf_counter()
    out = sampler.sample(prompts)
    return out, time.perf_counter() - start


def part_a(args, engine: str) -> list[str]:
    runs = 100 if args.quick else args.runs
    lines = [
        f"### (a) Enumerable models, alpha {ALPHA:g}, {runs} answers per cell, engine: {engine}",
        "",
        "| model | method | setting | TV - floor | accuracy (p_4) | tokens / answer | s / answer |",
        "|---|---|---|---|---|---|---|",
    ]
    tmp = Path(tempfile.mkdtemp(prefix="frontier-"))
    fits = []
    for name, spec in enumerable_models(args.quick, args.models, args.only).items():
        model, T, strong = spec["model"], spec["max_new_tokens"], spec["strong"]
        if spec["fit"]:
            fits.append(f"- {name}: {spec['fit']}")
            print(fits[-1], flush=True)
        exact = exact_power_distribution(model, None, [4], ALPHA, T)
        floor = noise_floor(exact, runs)
        target_acc = exact.get(strong, 0.0) if strong else None
        runner = model
        if engine == "vllm":
            from trl_power import load_vllm

            folder = tmp / name.replace(" ", "_").replace("/", "-")
            model.save_pretrained(folder)
            build_tokenizer(WORDS, with_pad=False).save_pretrained(folder)
            runner = load_vllm(str(folder), max_model_len=32)
        base = dict(alpha=ALPHA, max_new_tokens=T, num_samples_per_prompt=runs, batch_size=1 << 16, seed=1)
        grid = settings(args.quick)
        if args.mh_steps:  # an MH-only grid: uniform cuts at these step counts, tau 1
            grid = [
                ("mh", f"tau 1, {n} steps, uniform cuts", dict(proposal_temperature=1.0, mcmc_steps=n))
                for n in args.mh_steps
            ]
        for method, label, kw in grid:
            cfg = PowerSamplingConfig(method=method, **base, **resolve(kw, T))
            out, wall = run_sampler(runner, None, [[4]], cfg)
            tv = total_variation(empirical_distribution(out.completion_ids), exact) - floor
            acc = np.mean([tuple(c) == strong for c in out.completion_ids]) if strong else None
            lines.append(
                _row(name, method, label, tv, acc, target_acc, out.stats["tokens_forwarded"], wall, runs)
            )
        if args.mh_steps:
            continue
        # compute-matched baselines: N plain samples per answer
        n = 16
        cfg = PowerSamplingConfig(method="temperature", **{**base, "num_samples_per_prompt": runs * n})
        out, wall = run_sampler(runner, None, [[4]], cfg)
        ids = [tuple(c) for c in out.completion_ids]
        right = [float(c == strong) if strong else 0.0 for c in ids]
        for label, picked in (
            (f"best-of-{n} by self-reward", best_of_n([right], [out.base_logprobs], n)),
            (f"majority vote@{n}", majority_vote([ids], [right], n)),
        ):
            acc = float(np.mean(picked)) if strong else None
            lines.append(
                _row(
                    name, "baseline", label, None, acc, target_acc, out.stats["tokens_forwarded"], wall, runs
                )
            )
    return lines + (["", "Fitted trap models:", "", *fits] if fits else [])


def _row(name, method, label, tv, acc, target_acc, tokens, wall, answers) -> str:
    """One table row (also printed at once: the full run takes most of an hour)."""
    tv_s = "-" if tv is None else f"{tv:+.3f}"
    acc_s = "-" if acc is None else f"{acc:.2f} ({target_acc:.2f})"
    row = (
        f"| {name} | {method} | {label} | {tv_s} | {acc_s} | {tokens / answers:.1f} | {wall / answers:.5f} |"
    )
    print(row, flush=True)
    return row


def part_b(args) -> list[str]:
    from trl_power.evaluation import accuracy
    from trl_power.tasks import get_task, load_task_model

    prompts_n, samples = (6, 2) if args.quick else (args.task_prompts, 4)
    lines = [
        f"### (b) Embedded tasks, alpha 4, {prompts_n} held-out prompts x {samples} answers, transformers engine",
        "",
        "| task | method | setting | accuracy | self-reward | tokens / answer | s / answer | vs plain: diff [95% CI], p | vs MH default: diff, p |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    rows = [("temperature", "T=1", {}), ("low_temperature", "T=1/alpha", {})]
    rows += [
        (m, lab, kw) for m, lab, kw in settings(args.quick) if m != "temperature" and m != "low_temperature"
    ]
    # 28-token answers: 30 MH steps after each of the default 14 blocks cost ~2 s per answer here; keep 10 steps
    # (and 30 in one block), and the cheaper lookahead
    rows = [r for r in rows if not ("30 steps," in r[1] and "cuts" in r[1]) and "M 16" not in r[1]]
    for name in ("aligned", "misaligned"):
        task = get_task(name)
        model, tokenizer = load_task_model(name)
        prompts = task.eval_prompts(prompts_n, seed=0)
        T = task.max_new_tokens
        base = dict(alpha=ALPHA, max_new_tokens=T, num_samples_per_prompt=samples, batch_size=4096, seed=0)
        results = {}
        for method, label, kw in rows:
            cfg = PowerSamplingConfig(method=method, **base, **resolve(kw, T))
            out, wall = run_sampler(model, tokenizer, prompts, cfg)
            rewards = _grouped(
                out, [task.verify(prompts[i], c) for i, c in zip(out.prompt_indices, out.completions)]
            )
            results[(method, label)] = (
                rewards,
                float(np.mean(out.base_logprobs)),
                out.stats["tokens_forwarded"],
                wall,
            )
        n = 16
        out, wall = run_sampler(
            model,
            tokenizer,
            prompts,
            PowerSamplingConfig(method="temperature", **{**base, "num_samples_per_prompt": samples * n}),
        )
        right = _grouped(
            out, [task.verify(prompts[i], c) for i, c in zip(out.prompt_indices, out.completions)]
        )
        answers = _grouped(out, [task.extract_answer(c) for c in out.completions])
        lps = _grouped(out, out.base_logprobs)
        results[("baseline", f"best-of-{n} by self-reward")] = (
            best_of_n(right, lps, n),
            None,
            out.stats["tokens_forwarded"],
            wall,
        )
        results[("baseline", f"majority vote@{n}")] = (
            majority_vote(answers, right, n),
            None,
            out.stats["tokens_forwarded"],
            wall,
        )
        plain = results[("temperature", "T=1")][0]
        mh_default = next(v[0] for k, v in results.items() if k[0] == "mh")  # tau 1/a, 10 steps, uniform cuts
        for (method, label), (rewards, lp, tokens, wall) in results.items():
            answers_n = prompts_n * samples
            vs_plain = paired_test(rewards, plain)
            vs_mh = paired_test(rewards, mh_default)
            lines.append(
                f"| {name} | {method} | {label} | {accuracy(rewards):.3f} | {'-' if lp is None else f'{lp:.2f}'} | "
                f"{tokens / answers_n:.1f} | {wall / answers_n:.4f} | {vs_plain.mean_difference:+.3f} "
                f"[{vs_plain.ci[0]:+.3f}, {vs_plain.ci[1]:+.3f}], {vs_plain.p_value:.3g} | "
                f"{vs_mh.mean_difference:+.3f}, {vs_mh.p_value:.3g} |"
            )
            print(lines[-1], flush=True)
    return lines


def _grouped(out, values) -> list[list]:
    return group_by_prompt(values, out.prompt_indices, max(out.prompt_indices) + 1)


def part_c(args) -> list[str]:
    """The batch_size default: 2000 MH answers of the issue's measurement shape (vocab 4, 3 tokens, alpha 3)."""
    model = build_model(4, seed=0, initializer_range=0.3)
    n = 200 if args.quick else 2000
    lines = [
        f"### (c) Batch size: {n} MH answers (vocab 4, 3 new tokens, alpha 3, one block, 30 steps), transformers engine",
        "",
        "| batch_size | wall s | s / answer |",
        "|---|---|---|",
    ]
    for bs in (8, 32, 64, 128, 256):
        cfg = PowerSamplingConfig(
            method="mh",
            alpha=3.0,
            max_new_tokens=3,
            mcmc_steps=30,
            num_samples_per_prompt=n,
            batch_size=bs,
            seed=0,
        )
        _, wall = run_sampler(model, None, [[3]], cfg)
        lines.append(f"| {bs} | {wall:.1f} | {wall / n:.4f} |")
        print(lines[-1], flush=True)
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--parts", default="abc", help="any of a, b, c")
    parser.add_argument("--engines", nargs="+", default=["transformers"], choices=["transformers", "vllm"])
    parser.add_argument("--runs", type=int, default=1000, help="(a) answers per model and setting")
    parser.add_argument("--models", default="all", choices=["all", "random", "trap"], help="(a) which models")
    parser.add_argument(
        "--mh_steps",
        type=int,
        nargs="+",
        default=None,
        help="(a) instead of the grid: MH at tau 1 with these steps",
    )
    parser.add_argument(
        "--only", default=None, help="(a) only the models whose name contains this, e.g. '0.8/0.6 d0'"
    )
    parser.add_argument("--task_prompts", type=int, default=50, help="(b) held-out prompts per task")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--out", default=None)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    parts = [
        f"Machine: {platform.machine()}, {torch.get_num_threads()} torch thread(s), torch {torch.__version__}",
        "",
    ]
    if "a" in args.parts:
        for engine in args.engines:
            parts += [*part_a(args, engine), ""]
    if "b" in args.parts:
        parts += [*part_b(args), ""]
    if "c" in args.parts:
        parts += [*part_c(args), ""]
    text = "\n".join(parts)
    print(text)
    if args.out:
        Path(args.out).write_text(text + "\n")


if __name__ == "__main__":
    main()
