"""Loading the tiny base model of a task: the checkpoint shipped in the package, else train and cache.

    model, tokenizer = load_task_model("aligned")

Shipped checkpoints live in trl_power/tasks/checkpoints/<task>/ (save_pretrained: safetensors weights,
config, tokenizer, train_stats.json) and are reproduced by `python -m trl_power.tasks.train`.
When one is missing it is trained (a few minutes on CPU) and cached in $TRL_POWER_CACHE/tasks/<task>
(default ~/.cache/trl_power/tasks/<task>).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch

CHECKPOINTS = Path(__file__).parent / "checkpoints"


def cache_dir() -> Path:
    root = os.environ.get("TRL_POWER_CACHE") or Path.home() / ".cache" / "trl_power"
    return Path(root) / "tasks"


def checkpoint_path(task_name: str) -> Path | None:
    """The folder holding a trained model of `task_name`: the shipped one, else the cached one, else None."""
    for root in (CHECKPOINTS, cache_dir()):
        path = root / task_name
        if (path / "config.json").exists() and (path / "model.safetensors").exists():
            return path
    return None


def load_task_model(task_name: str, train_if_missing: bool = True) -> tuple[torch.nn.Module, Any]:
    """(model in eval mode, tokenizer) of the task's base model, with AutoModelForCausalLM/AutoTokenizer."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from trl_power.tasks import get_task

    get_task(task_name)  # fail early on unknown names
    path = checkpoint_path(task_name)
    if path is None:
        if not train_if_missing:
            raise FileNotFoundError(
                f"No checkpoint for task {task_name!r} in {CHECKPOINTS} or {cache_dir()}."
            )
        from trl_power.tasks.train import save_task_model, train_task_model

        model, tokenizer, stats = train_task_model(task_name)
        path = save_task_model(model, tokenizer, cache_dir() / task_name, stats)
    model = AutoModelForCausalLM.from_pretrained(path)
    tokenizer = AutoTokenizer.from_pretrained(path)
    tokenizer.padding_side = "left"
    return model.eval(), tokenizer
