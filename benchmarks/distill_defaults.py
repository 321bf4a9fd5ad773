"""What makes power self-distillation learn on a first try: the student of Gemma 3 270M trained on SMC teacher data
of prompts other than the shipped ones, under several training settings, each evaluated on the 64 held-out prompts.

    python -m trl_power model gemma-3-270m --output_dir models/gemma-3-270m
    python benchmarks/distill_defaults.py --out benchmarks/results/distill_defaults.md

The prompts: the 91 training problems of the arithmetic task (trl_power/tasks/arithmetic.py), each asked with other
shots than the shipped prompts (3 solved training problems drawn with another seed), 2 variants per problem, the
first 128 of a seeded shuffle. The teacher: `trl-power sample` with recipes/configs/gemma-3-270m/sample.yaml on those
prompts (SMC-16, alpha 4, 2 runs per prompt, every particle kept, merged). Each setting is a `trl-power distill` run
of recipes/configs/gemma-3-270m/distill.yaml with its training fields replaced (a field left out of a setting takes
PowerDistillConfig's default), and one is the library API at the trainer's defaults (`first_try_with_the_api`: no
learning rate, epochs, schedule, batch size or weight_sampling given), each evaluated with `trl-power eval` (eval_student.yaml: 4 plain answers per prompt, and greedy), paired
against the base model on the same prompts. A step whose folder exists is not rerun (resumable).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import sys
from pathlib import Path

import numpy as np
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))
from real_model_training import CONFIGS, REPO, answers, command  # noqa: E402

# The training fields of distill.yaml that a setting may replace; a field a setting leaves out is removed from the
# config, so that PowerDistillConfig's default applies.
TRAINING_FIELDS = ("learning_rate", "num_train_epochs", "lr_scheduler_type", "weight_sampling", "max_steps")

# name: the training fields given (everything else is distill.yaml's: LoRA r 16 all-linear, batch 16, seed 0)
API_FIRST_TRY = "library API, trainer defaults"
SETTINGS: dict[str, dict] = {
    API_FIRST_TRY: {},
    "weighted batches, lr 5e-4 cosine, 1 epoch": {
        "learning_rate": 5e-4,
        "lr_scheduler_type": "cosine",
        "num_train_epochs": 1,
        "weight_sampling": False,
    },
    "weight sampling, lr 5e-4 cosine, 1 epoch": {
        "learning_rate": 5e-4,
        "lr_scheduler_type": "cosine",
        "num_train_epochs": 1,
        "weight_sampling": True,
    },
    "weight sampling, lr 2e-4 constant, 2 epochs": {
        "learning_rate": 2e-4,
        "lr_scheduler_type": "constant",
        "num_train_epochs": 2,
        "weight_sampling": True,
    },
}


def other_prompts(n: int = 128, variants: int = 2, seed: int = 1) -> list[str]:
    """The training problems asked with other shots than the shipped prompts (see the module docstring)."""
    from trl_power.tasks.arithmetic import FewShotArithmetic

    task = FewShotArithmetic()
    train = task.split("train")
    prompts = []
    for problem in train:
        pool = [p for p in train if p != problem]
        for k in range(variants):
            rng = random.Random(f"other:{seed}:{k}:{task.line(problem)}")
            shots = rng.sample(pool, task.shots)
            lines = "".join(f"{task.line(p)}{task.solve(p)}\n" for p in shots)
            prompts.append(lines + task.line(problem))
    shipped = set(task.prompts("train"))
    prompts = [p for p in prompts if p not in shipped]
    random.Random(seed).shuffle(prompts)
    return prompts[:n]


def first_try_with_the_api(model_dir: str, teacher: Path, output_dir: Path) -> None:
    """What a new user writes: the library API at the trainer's defaults (no learning rate, epochs, schedule, batch
    size or weight_sampling given; `use_cpu` and `report_to` because this machine has no GPU and no tracker), a LoRA
    student on all linear layers, the teacher data read back with `load_power_dataset`."""
    import torch
    from peft import LoraConfig
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from trl_power import PowerDistillConfig, PowerDistillTrainer, load_power_dataset

    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    trainer = PowerDistillTrainer(
        model=model,
        args=PowerDistillConfig(str(output_dir), use_cpu=True, report_to="none", save_strategy="no"),
        train_dataset=load_power_dataset(teacher),
        processing_class=tokenizer,
        peft_config=LoraConfig(r=16, lora_alpha=32, target_modules="all-linear", task_type="CAUSAL_LM"),
    )
    trainer.train()
    trainer.save_model()
    trainer.state.save_to_json(str(output_dir / "trainer_state.json"))


def distill_config(work: Path, name: str, fields: dict) -> Path:
    """distill.yaml with the setting's training fields (the others removed: the trainer's defaults)."""
    config = yaml.safe_load((CONFIGS / "distill.yaml").read_text())
    for key in TRAINING_FIELDS:
        config.pop(key, None)
    config.update(fields)
    path = work / "configs" / f"{slug(name)}.yaml"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


def slug(name: str) -> str:
    return "".join(c if c.isalnum() else "_" for c in name).strip("_")[:60]


def accuracy_cell(rewards: list[list[float]]) -> str:
    acc = np.array([np.mean(g) for g in rewards])
    return f"{acc.mean():.3f} ± {acc.std(ddof=1) / np.sqrt(acc.size):.3f}"


def paired_cell(rewards, reference) -> str:
    from trl_power.evaluation import paired_test

    c = paired_test(rewards, reference)
    return f"{c.mean_difference:+.3f} [{c.ci[0]:+.3f}, {c.ci[1]:+.3f}], p={c.p_value:.2f}"


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--model_dir", default="models/gemma-3-270m")
    parser.add_argument("--work_dir", default="outputs/distill-defaults")
    parser.add_argument("--settings", nargs="*", default=None, help="names of SETTINGS to run (default: all)")
    parser.add_argument("--out", default=None, help="write the table (Markdown) and raw numbers (JSON) here")
    args = parser.parse_args()
    work = REPO / args.work_dir
    work.mkdir(parents=True, exist_ok=True)

    prompts_file = work / "prompts.jsonl"
    if not prompts_file.exists():
        prompts_file.write_text("".join(json.dumps({"prompt": p}) + "\n" for p in other_prompts()))
    command(
        "sample",
        "sample.yaml",
        work / "teacher",
        args.model_dir,
        ["--dataset_name", str(prompts_file), "--num_samples_per_prompt", "2"],
    )
    greedy = ["--method", "greedy", "--num_samples_per_prompt", "1"]
    command("eval", "eval_plain.yaml", work / "eval_base", args.model_dir)
    command("eval", "eval_plain.yaml", work / "eval_base_greedy", args.model_dir, greedy)
    names = args.settings or list(SETTINGS)
    for name in names:
        student = work / f"student_{slug(name)}"
        config = distill_config(work, name, SETTINGS[name])
        if not student.exists() and name == API_FIRST_TRY:
            import time

            start = time.perf_counter()
            first_try_with_the_api(args.model_dir, work / "teacher", student)
            (student / "benchmark_seconds.json").write_text(
                json.dumps({"seconds": time.perf_counter() - start})
            )
        elif not student.exists():
            import subprocess
            import time

            cmd = [sys.executable, "-m", "trl_power", "distill", "--config", str(config)]
            cmd += ["--model_name_or_path", args.model_dir, "--dataset_name", str(work / "teacher")]
            cmd += ["--output_dir", str(student)]
            print("$", " ".join(cmd[2:]), flush=True)
            start = time.perf_counter()
            subprocess.run(cmd, check=True, cwd=REPO)
            (student / "benchmark_seconds.json").write_text(
                json.dumps({"seconds": time.perf_counter() - start})
            )
        command(
            "eval",
            "eval_student.yaml",
            work / f"eval_{slug(name)}",
            str(student),
            ["--update_model_card", "false"],
        )
        command(
            "eval",
            "eval_student.yaml",
            work / f"eval_{slug(name)}_greedy",
            str(student),
            [*greedy, "--update_model_card", "false"],
        )

    base, _ = answers(work / "eval_base")
    base_greedy, _ = answers(work / "eval_base_greedy")
    from datasets import load_from_disk

    teacher = load_from_disk(str(work / "teacher" / "dataset"))
    table = [
        "| setting | batch | steps | final train loss | plain | plain - base plain | greedy | greedy - base greedy "
        "| s |",
        "|---|---|---|---|---|---|---|---|---|",
        f"| base model | - | - | - | {accuracy_cell(base)} | - | {accuracy_cell(base_greedy)} | - | - |",
    ]
    raw = {"base": base, "base_greedy": base_greedy}
    for name in names:
        student = work / f"student_{slug(name)}"
        plain, _ = answers(work / f"eval_{slug(name)}")
        greedy_rewards, _ = answers(work / f"eval_{slug(name)}_greedy")
        state = json.loads((student / "trainer_state.json").read_text())
        losses = [h["loss"] for h in state["log_history"] if "loss" in h]
        seconds = json.loads((student / "benchmark_seconds.json").read_text())["seconds"]
        given = ", ".join(f"{k}={v}" for k, v in SETTINGS[name].items()) or "no training setting given"
        table.append(
            f"| {name} ({given}) | {state['train_batch_size']} | {state['global_step']} | {losses[-1] if losses else float('nan'):.3f} | "
            f"{accuracy_cell(plain)} | {paired_cell(plain, base)} | {accuracy_cell(greedy_rewards)} | "
            f"{paired_cell(greedy_rewards, base_greedy)} | {seconds:.0f} |"
        )
        raw[name] = {"plain": plain, "greedy": greedy_rewards, "losses": losses}
    flags = sorted({f for f in ("avx2", "avx512f", "amx_tile") if f in Path("/proc/cpuinfo").read_text()})
    text = (
        f"Gemma 3 270M (base, float32), teacher SMC-16 alpha 4 on {len(other_prompts())} other prompts "
        f"({len(teacher)} merged rows), students evaluated on the 64 held-out prompts (4 plain answers, seed 0; greedy "
        f"1); {platform.processor() or 'cpu'}, {os.cpu_count()} cores, flags {', '.join(flags)}.\n\n"
        + "\n".join(table)
        + "\n"
    )
    print("\n" + text)
    if args.out:
        Path(args.out).write_text(text)
        Path(args.out).with_suffix(".json").write_text(json.dumps(raw, indent=1))


if __name__ == "__main__":
    main()
