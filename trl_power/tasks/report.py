"""Measure what a task's base model does: plain vs low-temperature accuracy and the covariance diagnostic.

    python -m trl_power.tasks.report --task all --prompts 100 --samples 32

This is the check that the phenomena come from the data: it needs no power sampler. For held-out prompts
it draws `samples` plain answers (temperature 1) and as many at temperature 1/alpha (`PowerSampler`), scores them with the
task's verifier and the base model's log p(y|x), and runs `covariance_diagnostic` on the plain samples.
It also prints the same accuracies for an ideal model p = q (the corpus distribution, exactly).
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Sequence
from typing import Any

import numpy as np

from trl_power.diagnostic import covariance_diagnostic
from trl_power.evaluation import MethodResult, evaluate_sampling_output, format_results, group_by_prompt
from trl_power.sampling import PowerSampler, PowerSamplingConfig
from trl_power.tasks import get_task, list_tasks
from trl_power.tasks.models import load_task_model


def measure(
    task_name: str, num_prompts: int = 100, num_samples: int = 32, seed: int = 0, bootstrap: int = 200
) -> dict[str, Any]:
    """Plain and low-temperature results (`PowerSampler`, evaluated like every sampler: `evaluate_sampling_output`),
    the covariance diagnostic of the plain answers, and the ideal-model accuracies."""
    task = get_task(task_name)
    model, tokenizer = load_task_model(task_name)
    prompts = task.eval_prompts(num_prompts, seed=seed)
    results: list[MethodResult] = []
    for method, kind in (("plain", "temperature"), ("low_temperature", "low_temperature")):
        config = PowerSamplingConfig(
            method=kind,
            alpha=task.alpha,
            max_new_tokens=task.max_new_tokens,
            num_samples_per_prompt=num_samples,
            batch_size=1024,
            seed=seed,
        )
        out = PowerSampler(model, tokenizer, config).sample(prompts)
        results.append(evaluate_sampling_output(method, prompts, out, task.verify))
        if method == "plain":
            idx, n = out.prompt_indices, len(prompts)
            rewards = [task.verify(prompts[i], c) for i, c in zip(idx, out.completions)]
            diag = covariance_diagnostic(
                group_by_prompt(rewards, idx, n),
                group_by_prompt(out.base_logprobs, idx, n),
                task.alpha,
                bootstrap=bootstrap,
                seed=seed,
            )
    ideal = [task.trace_statistics(task.parse_prompt(p)) for p in prompts]
    ideal_mean = {k: float(np.mean([s[k] for s in ideal])) for k in ("plain", "low_temperature", "power")}
    return {"task": task_name, "results": results, "diagnostic": diag, "ideal": ideal_mean}


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--task", default="all", choices=[*list_tasks(), "all"])
    parser.add_argument("--prompts", type=int, default=100)
    parser.add_argument("--samples", type=int, default=32)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    for name in list_tasks() if args.task == "all" else [args.task]:
        out = measure(name, args.prompts, args.samples, args.seed)
        print(f"## {name}\n\n{format_results(out['results'])}\n")
        print(out["diagnostic"].message)
        print("ideal model (p = corpus distribution):", json.dumps(out["ideal"]), "\n", flush=True)


if __name__ == "__main__":
    main()
