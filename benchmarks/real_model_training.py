"""Both trainers on a real model: the power-distilled student and the self-reward policy of Gemma 3 270M, through the
package's commands, against the base model and the SMC sampler on the same held-out prompts.

    python -m trl_power model gemma-3-270m --output_dir models/gemma-3-270m
    python benchmarks/real_model_training.py --out benchmarks/results/real_model_training.md     # ~30 min, 2 cores

Every step is the command a user types, with the shipped configs of recipes/configs/gemma-3-270m/ (a step whose
output folder exists is not rerun, so an interrupted benchmark resumes; `--fresh` reruns everything):

    trl-power sample      --config sample.yaml        SMC-16 teacher data, alpha 4, 91 training prompts x 4 runs
    trl-power distill     --config distill.yaml       LoRA r16 student, weight-sampled rows, 2 epochs
    trl-power self-reward --config self_reward.yaml   LoRA r16 policy, RLOO with reward log p_base, alpha 4
    trl-power eval        --config eval_*.yaml        base plain / greedy, SMC-16, student, policy (64 held-out prompts)

Then: accuracy (mean over prompts of the per-prompt mean, with its standard error), paired comparisons
(`trl_power.evaluation.paired_test`: per-prompt differences, t-interval, sign-flip p-value) of the student and the
policy against SMC, plain and greedy; tokens forwarded and seconds per answer; training time; the covariance
diagnostic's predicted accuracy of p^alpha (from the base model's plain answers: 16 per prompt) beside every
measured power method; and the adapter read back with `PeftModel.from_pretrained(base, dir)` and sampled with the
eval recipe's settings and seed, whose answers must equal the recipe's.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
CONFIGS = REPO / "recipes" / "configs" / "gemma-3-270m"


def command(job: str, config: str, out: Path, model_dir: str, extra: list[str] = ()) -> float:
    """Runs `trl-power <job> --config <config>` into `out` unless it exists; its wall seconds (0 when skipped)."""
    if out.exists():
        return 0.0
    args = [
        sys.executable,
        "-m",
        "trl_power",
        job,
        "--config",
        str(CONFIGS / config),
        "--output_dir",
        str(out),
    ]
    args += ["--model_name_or_path", model_dir] if model_dir else []
    args += list(extra)
    print("$", " ".join(args[2:]), flush=True)
    start = time.perf_counter()
    subprocess.run(args, check=True, cwd=REPO)
    return time.perf_counter() - start


def folder(name: str) -> str:
    """The output folder of an evaluation: eval_<name> with spaces and dashes as underscores."""
    return "eval_" + name.replace(" ", "_").replace("-", "_")


def answers(path: Path) -> tuple[list[list[float]], dict]:
    """Per-prompt rewards of an eval folder and its metrics."""
    from trl_power.evaluation import group_by_prompt

    metrics = json.loads((path / "metrics.json").read_text())
    rows = [json.loads(line) for line in (path / "answers.jsonl").read_text().splitlines()]
    rewards = group_by_prompt(
        [r["reward"] for r in rows], [r["prompt_index"] for r in rows], metrics["num_prompts"]
    )
    return rewards, metrics


def adapter_round_trip(model_dir: str, student: Path, eval_folder: Path) -> dict:
    """The student read back with `PeftModel.from_pretrained(base, dir)` and sampled as eval_student.yaml samples
    (`generate_power_dataset`, the same config, seed and shard size): the completions and the accuracy must be the
    recipe's."""
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from trl_power import PowerSamplingConfig, generate_power_dataset
    from trl_power.evaluation import group_by_prompt
    from trl_power.verifiers import get_verifier

    metrics = json.loads((eval_folder / "metrics.json").read_text())
    recipe = [json.loads(line) for line in (eval_folder / "answers.jsonl").read_text().splitlines()]
    base = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    model = PeftModel.from_pretrained(base, str(student)).eval()
    tokenizer = AutoTokenizer.from_pretrained(str(student))
    config = PowerSamplingConfig(**metrics["sampling_config"])
    prompts = [json.loads(line)["prompt"] for line in (REPO / "recipes/data/arithmetic_eval.jsonl").open()]
    data = generate_power_dataset(model, tokenizer, prompts, config, shard_size=64)
    verifier = get_verifier("arithmetic")
    rewards = verifier.rewards(data["prompt"], data["completion"])
    per_prompt = group_by_prompt(rewards, data["prompt_index"], len(prompts))
    accuracy = float(np.mean([np.mean(g) for g in per_prompt]))
    same = [r["completion_ids"] for r in recipe] == data["completion_ids"]
    return {"accuracy": accuracy, "recipe_accuracy": metrics["accuracy"], "same_completions": same}


def main() -> None:
    from trl_power.evaluation import paired_test

    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--model_dir", default="models/gemma-3-270m")
    parser.add_argument(
        "--work_dir", default="outputs/gemma-3-270m", help="where every step writes its folder"
    )
    parser.add_argument("--fresh", action="store_true", help="delete the steps' folders first")
    parser.add_argument("--out", default=None, help="write the tables (Markdown) and raw numbers (JSON) here")
    args = parser.parse_args()
    work = REPO / args.work_dir
    steps = ["teacher", "student", "self_reward", *(folder(n) for n in EVALS)]
    if args.fresh:
        for step in steps:
            shutil.rmtree(work / step, ignore_errors=True)

    seconds = {
        "teacher": command("sample", "sample.yaml", work / "teacher", args.model_dir),
        "student": command(
            "distill",
            "distill.yaml",
            work / "student",
            args.model_dir,
            ["--dataset_name", str(work / "teacher")],
        ),
        "self_reward": command("self-reward", "self_reward.yaml", work / "self_reward", args.model_dir),
    }
    for name, (config, model, extra) in EVALS.items():
        model_dir = {
            "base": args.model_dir,
            "student": str(work / "student"),
            "policy": str(work / "self_reward"),
        }
        seconds[folder(name)] = command("eval", config, work / folder(name), model_dir[model], extra)
    for step in ("teacher", "student", "self_reward"):  # wall time of the last run that made the folder
        record = work / step / "benchmark_seconds.json"
        if seconds[step]:
            record.write_text(json.dumps({"seconds": seconds[step]}))
        seconds[step] = json.loads(record.read_text())["seconds"] if record.exists() else float("nan")

    rows = {name: answers(work / folder(name)) for name in EVALS}
    diagnostic = rows["base plain x16"][1]["diagnostic"]
    predicted = diagnostic["predicted_power_reward"]
    table = [
        "| model, sampler | accuracy | vs SMC-16 | vs base plain | vs base greedy | predicted (diagnostic) "
        "| tokens/answer | s/answer |",
        "|---|---|---|---|---|---|---|---|",
    ]
    raw = {}
    for name, (rewards, metrics) in rows.items():
        acc = np.array([np.mean(g) for g in rewards])
        cells = [name, f"{acc.mean():.3f} ± {acc.std(ddof=1) / np.sqrt(acc.size):.3f}"]
        for ref in ("SMC-16", "base plain", "base greedy"):
            if name == ref or name == "base plain x16" or (ref == "base plain" and name == "base plain x16"):
                cells.append("-")
                continue
            c = paired_test(rewards, rows[ref][0])
            cells.append(f"{c.mean_difference:+.3f} [{c.ci[0]:+.3f}, {c.ci[1]:+.3f}], p={c.p_value:.3f}")
        cells.append(f"{predicted:.3f}" if name in POWER_METHODS else "-")
        cells += [f"{metrics['tokens_per_answer']:.1f}", f"{metrics['seconds_per_answer']:.3f}"]
        table.append("| " + " | ".join(cells) + " |")
        raw[name] = {"rewards": rewards, **{k: metrics[k] for k in ("accuracy", "tokens_per_answer")}}

    student_card = (work / "student" / "README.md").read_text()
    round_trip = adapter_round_trip(args.model_dir, work / "student", work / folder("student"))
    teacher = json.loads((work / "teacher" / "power_dataset.json").read_text())
    from datasets import load_from_disk

    teacher_rows = load_from_disk(str(work / "teacher" / "dataset"))
    trainer_state = {
        step: json.loads((work / step / "trainer_state.json").read_text())
        for step in ("student", "self_reward")
    }
    flags = sorted({f for f in ("avx2", "avx512f", "amx_tile") if f in Path("/proc/cpuinfo").read_text()})
    lines = [
        f"Gemma 3 270M (base, float32), 64 held-out 3-shot arithmetic prompts, alpha 4; "
        f"{platform.processor() or 'cpu'}, {os.cpu_count()} cores, flags {', '.join(flags)}.",
        "",
        "\n".join(table),
        "",
        f"Diagnostic (base plain, 16 answers per prompt): {diagnostic['message']}",
        "",
        f"- Teacher data: {len(teacher_rows)} merged rows from {teacher['num_shards']} shards, "
        f"{seconds['teacher']:.0f} s (`trl-power sample`, SMC-16, 91 prompts x 4 runs).",
        f"- Student: {trainer_state['student']['global_step']} steps, {seconds['student']:.0f} s "
        f"(`trl-power distill`, whole command).",
        f"- Policy: {trainer_state['self_reward']['global_step']} steps, {seconds['self_reward']:.0f} s "
        f"(`trl-power self-reward`, whole command).",
        f"- Adapter read back with PeftModel.from_pretrained: accuracy {round_trip['accuracy']:.3f} "
        f"(recipe {round_trip['recipe_accuracy']:.3f}), same completions: {round_trip['same_completions']}.",
        f"- Student model card records alpha: {'alpha: 4.0' in student_card}, sampler: {'smc' in student_card}, "
        f"accuracy: {'Evaluation (trl-power eval)' in student_card}.",
    ]
    text = "\n".join(lines) + "\n"
    print("\n" + text)
    if args.out:
        Path(args.out).write_text(text)
        extra = {"seconds": seconds, "round_trip": round_trip, "diagnostic": diagnostic, "rows": raw}
        Path(args.out).with_suffix(".json").write_text(json.dumps(extra, indent=1, default=str))


# name: (eval config, which model, extra arguments); the same 64 prompts and seed everywhere.
EVALS = {
    "base plain": ("eval_plain.yaml", "base", []),
    "base plain x16": ("eval_plain.yaml", "base", ["--num_samples_per_prompt", "16", "--seed", "1"]),
    "base greedy": ("eval_plain.yaml", "base", ["--method", "greedy", "--num_samples_per_prompt", "1"]),
    "SMC-16": ("eval_smc.yaml", "base", ["--num_samples_per_prompt", "4"]),
    "student": ("eval_student.yaml", "student", []),
    "student greedy": (
        "eval_student.yaml",
        "student",
        ["--method", "greedy", "--num_samples_per_prompt", "1"],
    ),
    "policy": ("eval_policy.yaml", "policy", []),
}
POWER_METHODS = ("SMC-16", "student", "policy")

if __name__ == "__main__":
    main()
