"""`trl-power demo`: the paper's three routes to p(y|x)^alpha, side by side, on the embedded tasks.

For each task (`aligned`: power should help; `misaligned`: power should hurt) the demo loads the shipped tiny
base model (trained if missing) and, on held-out prompts, evaluates

- plain sampling (T = 1) and per-token low temperature (tau = 1/alpha), the 1x-cost baselines;
- the power samplers MH (uniform and entropy-placed cuts), SMC and SIR (`PowerSampler`);
- a power-self-distilled LoRA student: `generate_power_dataset` (SMC teacher, training-split prompts) then
  `PowerDistillTrainer`, answering by plain sampling;
- a `PowerSelfRewardTrainer` LoRA policy (RLOO with the self-reward log p_ref, beta = 1/(alpha - 1)), answering by
  plain sampling.

Each row reports accuracy (the task's verifier), the self-reward E[log p_base(y|x)] of the answers, tokens
forwarded and seconds per answer, and the measured gain over plain sampling next to the gain that the covariance
diagnostic predicted from plain samples alone (`trl_power.diagnostic.covariance_diagnostic`). The output folder
gets `report.md`, `results.json` and two PNG plots (accuracy against tokens per answer; predicted against measured
gain). Everything is drawn from `--seed`.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import tempfile
import time
from collections.abc import Callable
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np

from trl_power.trainers.utils import CPU_RUN

#: Methods whose target is p_alpha: the diagnostic's predicted gain applies to them.
POWER_METHODS = ("MH", "SMC", "SIR", "distilled student", "self-reward policy")
ADAPTER_LABELS = {"lora": "LoRA r=16 + head", "full": "all weights"}

QUICK = dict(
    prompts=6,
    samples=2,
    diagnostic_samples=8,
    particles=4,
    mcmc_steps=2,
    distill_prompts=32,
    distill_steps=4,
    rl_steps=2,
    bootstrap=20,
)


def add_demo_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """The demo's command-line flags (used by `trl-power demo`)."""
    parser.add_argument(
        "--tasks",
        nargs="+",
        default=["aligned", "misaligned"],
        choices=["aligned", "misaligned"],
        help="tasks to run",
    )
    parser.add_argument("--alpha", type=float, default=None, help="the power alpha (default: the task's, 4)")
    parser.add_argument("--prompts", type=int, default=50, help="held-out prompts per task")
    parser.add_argument("--samples", type=int, default=4, help="answers per prompt and method")
    parser.add_argument(
        "--diagnostic_samples",
        type=int,
        default=32,
        help="plain answers per prompt (plain-sampling row and covariance diagnostic)",
    )
    parser.add_argument(
        "--particles", type=int, default=16, help="SMC particles / SIR proposals (and the teacher)"
    )
    parser.add_argument(
        "--mcmc_steps", type=int, default=10, help="MH steps per block (the library's block schedule)"
    )
    parser.add_argument(
        "--distill_prompts", type=int, default=512, help="training prompts of the teacher data"
    )
    parser.add_argument("--distill_steps", type=int, default=300, help="PowerDistillTrainer steps (batch 64)")
    parser.add_argument(
        "--student_adapters",
        nargs="+",
        default=["lora", "full"],
        choices=["lora", "full"],
        help="distilled students to train: a LoRA adapter (r=16, all linear layers) and/or all weights",
    )
    parser.add_argument(
        "--rl_steps", type=int, default=300, help="PowerSelfRewardTrainer steps (64 answers each)"
    )
    parser.add_argument(
        "--policy_adapter",
        default="full",
        choices=["lora", "full"],
        help="what PowerSelfRewardTrainer trains: all weights or a LoRA adapter",
    )
    parser.add_argument("--bootstrap", type=int, default=200, help="bootstrap replicates of the diagnostic")
    parser.add_argument("--threads", type=int, default=1, help="torch threads")
    parser.add_argument(
        "--output_dir",
        default=None,
        help="where report.md, results.json and the PNGs go (default outputs/demo, outputs/demo-quick with --quick)",
    )
    parser.add_argument("--seed", type=int, default=0, help="seed of every random draw")
    parser.add_argument(
        "--quick", action="store_true", help="a tiny run for tests (seconds, numbers meaningless)"
    )
    parser.add_argument("--no_plots", action="store_true", help="skip the PNG plots")
    return parser


def _quiet_libraries() -> None:
    import datasets
    import transformers

    datasets.disable_progress_bars()
    transformers.logging.set_verbosity_error()
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def _timed(fn: Callable[[], Any]) -> tuple[Any, float, float]:
    c0, t0 = time.process_time(), time.perf_counter()
    out = fn()
    return out, time.perf_counter() - t0, time.process_time() - c0


def _score(base: Any, sampler: Any, prompts: list[str], out: Any) -> list[float]:
    """log p_base(y|x) of every answer in `out` (the self-reward, under the base model)."""
    from trl_power.scoring import sequence_logprobs

    prompt_ids = sampler.tokenize(prompts)
    return (
        sequence_logprobs(
            base, [prompt_ids[i] for i in out.prompt_indices], out.completion_ids, batch_size=256
        )
        .double()
        .tolist()
    )


def _evaluate(
    name: str,
    model: Any,
    base: Any,
    tokenizer: Any,
    task: Any,
    prompts: list[str],
    config: Any,
    rescore: bool = False,
) -> tuple[Any, Any]:
    from trl_power.evaluation import evaluate_sampling_output
    from trl_power.sampling import PowerSampler

    sampler = PowerSampler(model, tokenizer, config)
    out, wall, cpu = _timed(lambda: sampler.sample(prompts))
    if rescore:  # a trained model samples; the self-reward is still log p of the *base* model
        out.base_logprobs = _score(base, sampler, prompts, out)
    result = evaluate_sampling_output(name, prompts, out, task.verify, ks=(1,), seconds=wall)
    result.extra["cpu_seconds_per_answer"] = cpu / len(out)
    return result, out


def _lora(r: int = 16) -> Any:
    from peft import LoraConfig

    # A trainable copy of the LM head (modules_to_save): with the head and the final RMSNorm frozen, a LoRA on
    # the linear layers cannot make these tiny models as sharp as p^alpha (docs/demo.md derives the cap).
    return LoraConfig(
        r=r, lora_alpha=2 * r, lora_dropout=0.0, target_modules="all-linear", modules_to_save=["lm_head"]
    )


def _teacher_data(args: Any, task: Any, alpha: float, seed: int) -> tuple[Any, dict]:
    """Teacher data: `generate_power_dataset` with SMC on training-split prompts (one answer per prompt)."""
    from trl_power import PowerSamplingConfig, generate_power_dataset
    from trl_power.tasks import load_task_model

    teacher, tokenizer = load_task_model(task.name)
    problems = task.split("train")
    rng = np.random.default_rng(seed)
    chosen = rng.choice(len(problems), size=min(args.distill_prompts, len(problems)), replace=False)
    train_prompts = [task.format_prompt(problems[int(i)]) for i in chosen]
    teacher_cfg = PowerSamplingConfig(
        method="smc",
        alpha=alpha,
        max_new_tokens=task.max_new_tokens,
        num_particles=args.particles,
        batch_size=1024,  # sequences: 64 runs of 16 particles
        seed=seed,
    )
    data, gen_wall, gen_cpu = _timed(
        lambda: generate_power_dataset(teacher, tokenizer, train_prompts, teacher_cfg, show_progress=True)
    )
    info = {
        "teacher": teacher_cfg.to_dict(),
        "teacher_rows": len(data),
        "teacher_accuracy_on_train_prompts": float(np.mean(task.rewards(data["prompt"], data["completion"]))),
        "teacher_generation_wall_s": gen_wall,
        "teacher_generation_cpu_s": gen_cpu,
    }
    return data, info


def _train_student(
    args: Any, task: Any, data: Any, adapter: str, workdir: Path, seed: int
) -> tuple[Any, dict]:
    """Power self-distillation: `PowerDistillTrainer` on the teacher data; a LoRA adapter or all weights."""
    from trl_power import PowerDistillConfig, PowerDistillTrainer
    from trl_power.tasks import load_task_model

    student, tokenizer = load_task_model(task.name)
    config = PowerDistillConfig(
        output_dir=str(workdir / f"{task.name}-student-{adapter}"),
        per_device_train_batch_size=64,
        max_steps=args.distill_steps,
        learning_rate=5e-3,
        lr_scheduler_type="cosine",
        warmup_steps=max(1, args.distill_steps // 20),
        logging_steps=max(1, args.distill_steps // 5),
        **{**CPU_RUN, "disable_tqdm": False},
        seed=seed,
        data_seed=seed,
    )
    trainer = PowerDistillTrainer(
        student,
        config,
        train_dataset=data,
        processing_class=tokenizer,
        peft_config=_lora() if adapter == "lora" else None,
    )
    _, train_wall, train_cpu = _timed(trainer.train)
    losses = [h["loss"] for h in trainer.state.log_history if "loss" in h]
    info = {
        "adapter": adapter,
        "train_steps": args.distill_steps,
        "train_wall_s": train_wall,
        "train_cpu_s": train_cpu,
        "loss_first_last": [losses[0], losses[-1]] if losses else None,
    }
    return trainer.model.eval(), info


def _train_self_reward(
    args: Any, task: Any, alpha: float, adapter: str, workdir: Path, seed: int
) -> tuple[Any, dict]:
    """A policy trained by PowerSelfRewardTrainer (reward log p_ref, beta = 1/(alpha-1)): all weights or LoRA."""
    from datasets import Dataset

    from trl_power import PowerSelfRewardConfig, PowerSelfRewardTrainer
    from trl_power.tasks import load_task_model

    policy, tokenizer = load_task_model(task.name)
    problems = task.split("train")
    rng = np.random.default_rng(seed + 1)
    n = 8 * max(1, args.rl_steps)  # 8 prompts per step, 8 answers each
    chosen = rng.choice(len(problems), size=min(n, len(problems)), replace=False)
    dataset = Dataset.from_dict({"prompt": [task.format_prompt(problems[int(i)]) for i in chosen]})
    config = PowerSelfRewardConfig(
        output_dir=str(workdir / f"{task.name}-self-reward"),
        alpha=alpha,
        per_device_train_batch_size=64,
        num_generations=8,
        max_completion_length=task.max_new_tokens,
        learning_rate=1e-3,
        max_steps=args.rl_steps,
        logging_steps=max(1, args.rl_steps // 5),
        **{**CPU_RUN, "disable_tqdm": False},
        seed=seed,
        data_seed=seed,
    )
    trainer = PowerSelfRewardTrainer(
        model=policy,
        args=config,
        train_dataset=dataset,
        processing_class=tokenizer,
        peft_config=_lora() if adapter == "lora" else None,
    )
    _, wall, cpu = _timed(trainer.train)
    logs = [h for h in trainer.state.log_history if "self_reward/mean" in h]
    info = {
        "adapter": adapter,
        "beta": config.beta,
        "train_steps": args.rl_steps,
        "train_wall_s": wall,
        "train_cpu_s": cpu,
        "self_reward_first_last": [logs[0]["self_reward/mean"], logs[-1]["self_reward/mean"]]
        if logs
        else None,
    }
    return trainer.model.eval(), info


def run_task(args: Any, name: str, workdir: Path, bar: Any) -> dict[str, Any]:
    from trl_power.diagnostic import covariance_diagnostic
    from trl_power.sampling import PowerSamplingConfig
    from trl_power.tasks import get_task, load_task_model

    task = get_task(name)
    alpha = float(args.alpha if args.alpha is not None else task.alpha)
    T = task.max_new_tokens
    base, tokenizer = load_task_model(name)
    prompts = task.eval_prompts(args.prompts, seed=args.seed)

    def cfg(method: str, n: int, **kw: Any) -> PowerSamplingConfig:
        return PowerSamplingConfig(
            method=method,
            alpha=alpha,
            max_new_tokens=T,
            num_samples_per_prompt=n,
            batch_size=1024,  # sequences: MH chains, or runs x particles
            seed=args.seed,
            **kw,
        )

    results, info = [], {}
    bar.set_postfix_str(f"{name}: plain sampling")
    plain, plain_out = _evaluate(
        "plain (T=1)", base, base, tokenizer, task, prompts, cfg("temperature", args.diagnostic_samples)
    )
    results.append(plain)
    bar.update()
    rewards = np.array(
        [task.verify(prompts[i], c) for i, c in zip(plain_out.prompt_indices, plain_out.completions)]
    )
    groups = np.array(plain_out.prompt_indices)
    diag = covariance_diagnostic(
        rewards,
        np.array(plain_out.base_logprobs),
        alpha,
        groups=groups,
        bootstrap=args.bootstrap,
        seed=args.seed,
    )
    samplers = [
        ("low temperature (tau=1/alpha)", cfg("low_temperature", args.samples)),
        (f"MH ({args.mcmc_steps} steps)", cfg("mh", args.samples, mcmc_steps=args.mcmc_steps)),
        (
            f"MH, entropy cuts ({args.mcmc_steps} steps)",
            cfg("mh", args.samples, mcmc_steps=args.mcmc_steps, mh_cut="entropy"),
        ),
        (f"SMC ({args.particles} particles)", cfg("smc", args.samples, num_particles=args.particles)),
        (f"SIR ({args.particles} proposals)", cfg("sir", args.samples, num_particles=args.particles)),
    ]
    for label, c in samplers:
        bar.set_postfix_str(f"{name}: {label}")
        results.append(_evaluate(label, base, base, tokenizer, task, prompts, c)[0])
        bar.update()

    bar.set_postfix_str(f"{name}: teacher data (SMC)")
    data, info["teacher"] = _teacher_data(args, task, alpha, args.seed)
    info["distill"] = {}
    for adapter in args.student_adapters:
        bar.set_postfix_str(f"{name}: distilling the student ({ADAPTER_LABELS[adapter]})")
        student, info["distill"][adapter] = _train_student(args, task, data, adapter, workdir, args.seed)
        label = f"distilled student ({ADAPTER_LABELS[adapter]}, T=1)"
        answer = cfg("temperature", args.samples)
        results.append(_evaluate(label, student, base, tokenizer, task, prompts, answer, rescore=True)[0])
        bar.update()
    bar.set_postfix_str(f"{name}: self-reward RL ({ADAPTER_LABELS[args.policy_adapter]})")
    policy, info["self_reward"] = _train_self_reward(
        args, task, alpha, args.policy_adapter, workdir, args.seed
    )
    label = f"self-reward policy ({ADAPTER_LABELS[args.policy_adapter]}, T=1)"
    answer = cfg("temperature", args.samples)
    results.append(_evaluate(label, policy, base, tokenizer, task, prompts, answer, rescore=True)[0])
    bar.update()

    rows = []
    for r in results:
        power = r.method.startswith(POWER_METHODS)
        rows.append(
            {
                **r.to_dict(),
                "targets_p_alpha": power,
                "measured_gain": r.accuracy - plain.accuracy,
                "predicted_gain": diag.predicted_gain if power else None,
            }
        )
    return {
        "task": name,
        "alpha": alpha,
        "num_prompts": len(prompts),
        "diagnostic": {
            k: v for k, v in diag.to_dict().items() if k not in ("s", "covariance", "covariance_ci")
        },
        "covariance_curve": {"s": diag.s, "covariance": diag.covariance},
        "rows": rows,
        "training": info,
    }


def format_table(task_results: list[dict[str, Any]]) -> str:
    head = [
        "task",
        "method",
        "accuracy",
        "self-reward",
        "tokens/answer",
        "s/answer",
        "predicted gain [90% CI]",
        "measured gain",
    ]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for t in task_results:
        lo, hi = t["diagnostic"]["gain_ci"]
        for r in t["rows"]:
            pred = (
                f"{r['predicted_gain']:+.3f} [{lo:+.3f}, {hi:+.3f}]"
                if r["predicted_gain"] is not None
                else "-"
            )
            se = r["accuracy_stderr"]
            acc = f"{r['accuracy']:.3f} ± {se:.3f}" if math.isfinite(se) else f"{r['accuracy']:.3f}"
            lines.append(
                "| "
                + " | ".join(
                    [
                        t["task"],
                        r["method"],
                        acc,
                        f"{r['mean_self_reward']:.2f}",
                        f"{r['tokens_per_answer']:.0f}",
                        f"{r['seconds_per_answer']:.4f}",
                        pred,
                        f"{r['measured_gain']:+.3f}",
                    ]
                )
                + " |"
            )
    return "\n".join(lines)


def make_plots(task_results: list[dict[str, Any]], out_dir: Path) -> list[str]:
    import matplotlib

    matplotlib.use("Agg")  # no display needed
    import matplotlib.pyplot as plt
    from matplotlib.ticker import NullFormatter, ScalarFormatter

    paths = []
    markers = "osDv^<>p"
    fig, axes = plt.subplots(1, len(task_results), figsize=(5.2 * len(task_results), 4), squeeze=False)
    for ax, t in zip(axes[0], task_results):
        for k, r in enumerate(t["rows"]):
            se = r["accuracy_stderr"] if math.isfinite(r["accuracy_stderr"]) else 0.0
            ax.errorbar(
                r["tokens_per_answer"],
                r["accuracy"],
                yerr=se,
                fmt=markers[k % len(markers)],
                label=r["method"],
                capsize=3,
            )
        ax.set_xscale("log")
        ax.xaxis.set_minor_formatter(NullFormatter())
        ax.xaxis.set_major_formatter(ScalarFormatter())
        ax.set_xticks(
            [t for t in (10, 20, 50, 100, 200, 500, 1000, 2000) if ax.get_xlim()[0] <= t <= ax.get_xlim()[1]]
        )
        ax.set_ylim(-0.03, 1.03)
        ax.set_xlabel("tokens forwarded per answer (log)")
        ax.set_ylabel("accuracy")
        ax.set_title(f"{t['task']} (alpha = {t['alpha']:g})")
        ax.grid(alpha=0.3)
    axes[0][0].legend(fontsize=7, loc="best")
    fig.tight_layout()
    path = out_dir / "accuracy_vs_cost.png"
    fig.savefig(path, dpi=80)
    plt.close(fig)
    paths.append(str(path))

    fig, ax = plt.subplots(figsize=(5, 4.5))
    for t in task_results:
        lo, hi = t["diagnostic"]["gain_ci"]
        for k, r in enumerate(r for r in t["rows"] if r["predicted_gain"] is not None):
            p = r["predicted_gain"]
            ax.errorbar(
                p,
                r["measured_gain"],
                xerr=[[p - lo], [hi - p]],
                fmt=markers[k % len(markers)],
                color="C0" if t["task"] == "aligned" else "C3",
                capsize=3,
                label=f"{t['task']}: {r['method']}",
            )
    ax.plot([-1, 1], [-1, 1], "k--", lw=0.8)
    ax.axhline(0, color="grey", lw=0.5)
    ax.axvline(0, color="grey", lw=0.5)
    ax.set_xlim(-1.05, 1.05)
    ax.set_ylim(-1.05, 1.05)
    ax.set_xlabel("predicted gain (covariance diagnostic, plain samples)")
    ax.set_ylabel("measured gain over plain sampling")
    ax.legend(fontsize=6, loc="upper left")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    path = out_dir / "predicted_vs_measured_gain.png"
    fig.savefig(path, dpi=80)
    plt.close(fig)
    paths.append(str(path))
    return paths


def run_demo(args: argparse.Namespace) -> dict[str, Any]:
    """Run the demo with parsed `add_demo_arguments` flags; print the table, write the report; return the results."""
    import torch
    from tqdm.auto import tqdm

    if args.quick:
        for key, value in QUICK.items():
            setattr(args, key, min(getattr(args, key), value))
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    _quiet_libraries()
    if args.output_dir is None:
        args.output_dir = "outputs/demo-quick" if args.quick else "outputs/demo"
    out_dir = Path(args.output_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    wall0, cpu0 = time.perf_counter(), time.process_time()
    task_results = []
    with (
        tempfile.TemporaryDirectory() as tmp,
        tqdm(
            total=(7 + len(args.student_adapters)) * len(args.tasks), desc="trl-power demo", unit="method"
        ) as bar,
    ):
        for name in args.tasks:
            task_results.append(run_task(args, name, Path(tmp), bar))
    wall, cpu = time.perf_counter() - wall0, time.process_time() - cpu0

    table = format_table(task_results)
    machine = f"{platform.machine()}, {os.cpu_count()} CPU cores, {args.threads} torch thread(s), torch {torch.__version__}"
    when = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    settings = {k: v for k, v in vars(args).items() if k != "func"}
    plots = [] if args.no_plots else make_plots(task_results, out_dir)
    results = {
        "date": when,
        "machine": machine,
        "wall_seconds": wall,
        "cpu_seconds": cpu,
        "settings": settings,
        "tasks": task_results,
        "plots": plots,
    }
    (out_dir / "results.json").write_text(json.dumps(results, indent=2, default=str))
    diagnostics = "\n".join(f"- {t['task']}: {t['diagnostic']['message']}" for t in task_results)
    report = (
        f"# trl-power demo\n\n{when}; {machine}; wall {wall:.0f} s, CPU {cpu:.0f} s.\n\n"
        f"Settings: {json.dumps(settings)}\n\n{table}\n\n"
        "accuracy ± standard error over prompts; self-reward = mean log p_base(y|x) (nats); tokens/answer = tokens "
        "forwarded through the model per answer (training cost of the student and policy not included); "
        "predicted gain = the covariance diagnostic from the plain samples (applies to methods targeting p^alpha); "
        "measured gain = accuracy - plain accuracy.\n\nCovariance diagnostic:\n"
        f"{diagnostics}\n\n" + "".join(f"![plot]({Path(p).name})\n" for p in plots)
    )
    (out_dir / "report.md").write_text(report)
    print(f"\n{table}\n\n{diagnostics}\n")
    print(
        f"wall {wall:.0f} s, CPU {cpu:.0f} s; wrote {out_dir / 'report.md'}, {out_dir / 'results.json'}",
        end="",
    )
    print("".join(f", {p}" for p in plots))
    return results


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = add_demo_arguments(argparse.ArgumentParser(prog="trl-power demo", description=__doc__))
    return run_demo(parser.parse_args(argv))


if __name__ == "__main__":
    main()
