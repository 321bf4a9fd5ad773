"""Measure what a task's base model does: plain vs low-temperature accuracy and the covariance diagnostic.

    python -m trl_power.tasks.report --task all --prompts 100 --samples 32

This is the check that the phenomena come from the data: it needs no power sampler. For held-out prompts
it draws `samples` plain answers (temperature 1) and as many at temperature 1/alpha, scores them with the
task's verifier and the base model's log p(y|x), and runs `covariance_diagnostic` on the plain samples.
It also prints the same accuracies for an ideal model p = q (the corpus distribution, exactly).
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from trl_power.diagnostic import covariance_diagnostic
from trl_power.evaluation import MethodResult, evaluate_method, format_results
from trl_power.scoring import sequence_logprobs
from trl_power.tasks import get_task, list_tasks
from trl_power.tasks.models import load_task_model


@torch.no_grad()
def sample_answers(
    model: torch.nn.Module,
    tokenizer: Any,
    prompts: Sequence[str],
    num_samples: int,
    temperature: float,
    max_new_tokens: int,
    seed: int = 0,
    batch_size: int = 1024,
) -> dict[str, Any]:
    """`num_samples` answers per prompt by ancestral sampling at `temperature` (model.generate, KV cache).

    Returns completions (text, grouped per prompt), base log p(y|x) at temperature 1 (grouped), tokens
    forwarded (prompt + generated tokens per answer) and seconds.
    """
    torch.manual_seed(seed)
    eos = tokenizer.eos_token_id
    start = time.perf_counter()
    rows = [p for p in prompts for _ in range(num_samples)]
    flat_texts: list[str] = []
    ids: list[list[int]] = []
    prompt_ids: list[list[int]] = []
    tokens = 0
    for i in range(0, len(rows), batch_size):
        enc = tokenizer(rows[i : i + batch_size], return_tensors="pt", padding=True, add_special_tokens=False)
        out = model.generate(
            **enc,
            do_sample=True,
            temperature=temperature,
            top_k=0,
            top_p=1.0,
            max_new_tokens=max_new_tokens,
            pad_token_id=tokenizer.pad_token_id,
            eos_token_id=eos,
        )
        width = enc["input_ids"].shape[1]
        for b, row in enumerate(out[:, width:].tolist()):
            comp = row[: row.index(eos) + 1] if eos in row else row
            prompt = enc["input_ids"][b][enc["attention_mask"][b] > 0].tolist()
            ids.append(comp)
            prompt_ids.append(prompt)
            flat_texts.append(tokenizer.decode(comp, skip_special_tokens=True))
            tokens += len(prompt) + len(comp)
    texts = [flat_texts[i : i + num_samples] for i in range(0, len(flat_texts), num_samples)]
    seconds = time.perf_counter() - start
    lp = sequence_logprobs(model, prompt_ids, ids, batch_size=256).double().numpy()
    return {
        "completions": texts,
        "base_logprobs": lp.reshape(len(prompts), num_samples),
        "tokens": tokens,
        "seconds": seconds,
    }


def measure(
    task_name: str, num_prompts: int = 100, num_samples: int = 32, seed: int = 0, bootstrap: int = 200
) -> dict[str, Any]:
    """Plain and low-temperature results, the covariance diagnostic, and the ideal-model accuracies."""
    task = get_task(task_name)
    model, tokenizer = load_task_model(task_name)
    prompts = task.eval_prompts(num_prompts, seed=seed)
    results: list[MethodResult] = []
    plain_draw: dict[str, Any] = {}
    for method, temperature in (("plain", 1.0), ("low_temperature", 1.0 / task.alpha)):
        draw = sample_answers(model, tokenizer, prompts, num_samples, temperature, task.max_new_tokens, seed)
        rewards = [[task.verify(p, c) for c in group] for p, group in zip(prompts, draw["completions"])]
        draw["rewards"] = np.array(rewards)
        results.append(
            evaluate_method(method, rewards, draw["base_logprobs"], draw["tokens"], draw["seconds"])
        )
        if method == "plain":
            plain_draw = draw
    diag = covariance_diagnostic(
        plain_draw["rewards"], plain_draw["base_logprobs"], task.alpha, bootstrap=bootstrap, seed=seed
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
