"""Train the tiny base model of a task on its shaped corpus (deterministic from a seed).

    python -m trl_power.tasks.train --task aligned            # writes trl_power/tasks/checkpoints/aligned
    python -m trl_power.tasks.train --task all --out /tmp/ck   # both tasks, elsewhere

Maximum likelihood on the corpus: minimise the mean over completion tokens of -log p(y_t | x, y_<t)
(prompt tokens are not scored), so the model learns p(y|x) ≈ q(y|x), the task's trace distribution.
Fit is reported as KL(q || p) = E_{y~q}[log q(y|x) - log p(y|x)] in nats per completion, estimated on
held-out prompts (a problem the model never saw in training).

The corpus is drawn once (`num_examples` lines, seeded), then batches are drawn from it by a seeded
permutation per epoch; weights are initialised from the seed. With the same torch build and thread count
(1 by default), the same seed gives the same weights.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from trl_power.tasks import get_task, list_tasks
from trl_power.tasks.base import VOCABULARY, Example, ReasoningTask
from trl_power.tiny_models import build_model, build_tokenizer

CHECKPOINTS = Path(__file__).parent / "checkpoints"


@dataclass
class TrainConfig:
    """How a task model is built and trained.

    Attributes:
        seed: seeds the corpus, the initial weights and the batch order.
        num_examples: corpus lines drawn from the task's train problems.
        steps: optimiser steps; batch_size: lines per step.
        lr, warmup_steps, min_lr_ratio: AdamW with linear warmup, then cosine decay to lr * min_lr_ratio.
        weight_decay: AdamW weight decay.
        arch: "llama" (default) or "qwen2". Llama, because transformers 5's AutoTokenizer replaces the
            word-level tokenizer of a saved qwen2 model with Qwen2Tokenizer (qwen2 is on its list of model types
            whose Hub tokenizer class it overrides), which breaks the words; for llama it keeps ours.
        hidden_size, num_layers, num_heads: the architecture (intermediate size = 2 * hidden).
        max_position_embeddings: longest prompt + completion the model accepts.
        eval_examples: held-out lines for the KL(q || p) fit estimate.
        num_threads: torch threads during training (None: leave torch's setting). One thread by default: the
            same seed then gives the same weights on any machine with the same torch build, and on 2 shared
            cores one thread is as fast as two.
    """

    seed: int = 0
    num_examples: int = 200_000
    steps: int = 1500
    batch_size: int = 128
    lr: float = 3e-3
    warmup_steps: int = 100
    min_lr_ratio: float = 0.05
    weight_decay: float = 0.0
    arch: str = "llama"
    hidden_size: int = 64
    num_layers: int = 2
    num_heads: int = 4
    max_position_embeddings: int = 48
    eval_examples: int = 2000
    num_threads: int | None = 1


def build_task_tokenizer() -> Any:
    """The word-level tokenizer every task model shares: <eos> = 0, the task words, then <pad>."""
    return build_tokenizer(list(VOCABULARY))


def encode(tokenizer: Any, examples: Sequence[Example]) -> tuple[torch.Tensor, torch.Tensor]:
    """input_ids [N, L] (prompt, completion, EOS, right-padded) and labels [N, L] (-100 off the completion)."""
    vocab = tokenizer.get_vocab()
    eos, pad = tokenizer.eos_token_id, tokenizer.pad_token_id
    rows, labels = [], []
    for ex in examples:
        p = [vocab[w] for w in ex.prompt.split()]
        c = [vocab[w] for w in ex.completion.split()] + [eos]
        rows.append(p + c)
        labels.append([-100] * len(p) + c)
    width = max(len(r) for r in rows)
    ids = torch.full((len(rows), width), pad, dtype=torch.long)
    lab = torch.full((len(rows), width), -100, dtype=torch.long)
    for i, (r, lb) in enumerate(zip(rows, labels)):
        ids[i, : len(r)] = torch.tensor(r)
        lab[i, : len(lb)] = torch.tensor(lb)
    return ids, lab


def completion_nll(model: torch.nn.Module, ids: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """-log p(y|x) per line: the sum over completion tokens (labels != -100) of -log p(y_t | x, y_<t)."""
    logits = model(input_ids=ids).logits[:, :-1].float()
    target = labels[:, 1:]
    mask = target != -100
    lp = torch.log_softmax(logits, -1).gather(-1, target.clamp(min=0).unsqueeze(-1)).squeeze(-1)
    return -(lp * mask).sum(-1)


@torch.no_grad()
def heldout_kl(
    model: torch.nn.Module, tokenizer: Any, task: ReasoningTask, n: int, seed: int
) -> dict[str, float]:
    """KL(q || p) and the entropy H(q), in nats per completion, on `n` lines from held-out problems.

    Lines y ~ q(.|x) on eval problems; KL = mean[log q(y|x) + nll_p(y|x)], H = mean[-log q(y|x)].
    """
    import random

    rng = random.Random(seed)
    problems = task.split("eval")
    examples, logq = [], []
    for _ in range(n):
        problem = problems[rng.randrange(len(problems))]
        completion, kind = task.sample_trace(problem, rng)
        prompt = task.format_prompt(problem)
        examples.append(Example(prompt, completion, kind, task.verify(prompt, completion) == 1.0))
        logq.append(math.log(task.trace_distribution(problem)[completion][0]))
    ids, labels = encode(tokenizer, examples)
    model.eval()
    nll = torch.cat([completion_nll(model, ids[i : i + 512], labels[i : i + 512]) for i in range(0, n, 512)])
    lq = torch.tensor(logq, dtype=torch.float64)
    return {"kl": float((lq + nll.double()).mean()), "entropy": float(-lq.mean()), "nll": float(nll.mean())}


def train_task_model(
    task_name: str, config: TrainConfig | None = None, log_every: int = 250
) -> tuple[torch.nn.Module, Any, dict[str, Any]]:
    """Train the base model of `task_name`; returns (model in eval mode, tokenizer, training statistics)."""
    config = config or TrainConfig()
    previous_threads = torch.get_num_threads()
    if config.num_threads is not None:
        torch.set_num_threads(config.num_threads)
    try:
        return _train(get_task(task_name), config, log_every)
    finally:
        torch.set_num_threads(previous_threads)


def _train(
    task: ReasoningTask, config: TrainConfig, log_every: int
) -> tuple[torch.nn.Module, Any, dict[str, Any]]:
    task_name = task.name
    start = time.perf_counter()
    tokenizer = build_task_tokenizer()
    ids, labels = encode(tokenizer, task.corpus(config.num_examples, seed=config.seed))
    model = build_model(
        len(tokenizer),
        seed=config.seed,
        arch=config.arch,
        hidden_size=config.hidden_size,
        num_layers=config.num_layers,
        num_heads=config.num_heads,
        max_position_embeddings=config.max_position_embeddings,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    model.train()
    gen = torch.Generator().manual_seed(config.seed)
    opt = torch.optim.AdamW(model.parameters(), lr=config.lr, weight_decay=config.weight_decay)

    def lr_at(step: int) -> float:
        if step < config.warmup_steps:
            return config.lr * (step + 1) / config.warmup_steps
        frac = (step - config.warmup_steps) / max(1, config.steps - config.warmup_steps)
        return config.lr * (
            config.min_lr_ratio + (1 - config.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * frac))
        )

    order, pos, losses = torch.randperm(len(ids), generator=gen), 0, []
    for step in range(config.steps):
        if pos + config.batch_size > len(ids):
            order, pos = torch.randperm(len(ids), generator=gen), 0
        idx = order[pos : pos + config.batch_size]
        pos += config.batch_size
        lab = labels[idx]
        loss = completion_nll(model, ids[idx], lab).sum() / (lab[:, 1:] != -100).sum()
        for group in opt.param_groups:
            group["lr"] = lr_at(step)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        losses.append(loss.item())
        if log_every and (step + 1) % log_every == 0:
            recent = sum(losses[-log_every:]) / log_every
            print(
                f"[{task_name}] step {step + 1}/{config.steps} loss/token {recent:.4f} "
                f"({time.perf_counter() - start:.0f}s)",
                flush=True,
            )
    train_seconds = time.perf_counter() - start
    model.eval()
    fit = heldout_kl(model, tokenizer, task, config.eval_examples, seed=config.seed + 1)
    stats = {
        "task": task_name,
        "train_seconds": round(train_seconds, 1),
        "num_parameters": sum(p.numel() for p in model.parameters()),
        "final_loss_per_token": sum(losses[-100:]) / min(100, len(losses)),
        "heldout_kl_nats": fit["kl"],
        "heldout_entropy_nats": fit["entropy"],
        "torch_threads": torch.get_num_threads(),
        "config": dataclasses.asdict(config),
    }
    return model, tokenizer, stats


def save_task_model(model: torch.nn.Module, tokenizer: Any, path: str | Path, stats: dict[str, Any]) -> Path:
    """save_pretrained (safetensors) model + tokenizer, and train_stats.json, into `path`."""
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(path, safe_serialization=True)
    tokenizer.save_pretrained(path)
    (path / "train_stats.json").write_text(json.dumps(stats, indent=2) + "\n")
    return path


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--task", default="all", choices=[*list_tasks(), "all"])
    parser.add_argument("--out", default=str(CHECKPOINTS), help="folder; one subfolder per task")
    parser.add_argument("--seed", type=int, default=TrainConfig.seed)
    parser.add_argument("--steps", type=int, default=TrainConfig.steps)
    parser.add_argument("--num-threads", type=int, default=TrainConfig.num_threads)
    args = parser.parse_args(argv)
    names = list_tasks() if args.task == "all" else [args.task]
    for name in names:
        config = TrainConfig(seed=args.seed, steps=args.steps, num_threads=args.num_threads)
        model, tokenizer, stats = train_task_model(name, config)
        path = save_task_model(model, tokenizer, Path(args.out) / name, stats)
        print(json.dumps({k: v for k, v in stats.items() if k != "config"}), f"-> {path}", flush=True)


if __name__ == "__main__":
    main()
