"""Synthetic reasoning tasks with verifiable answers, and the tiny base models trained on them.

- ``get_task("aligned")``: running sum mod 10; power sampling should help (a trap for low temperature).
- ``get_task("misaligned")``: a*b + c*d mod 10; the likeliest trace is a wrong shortcut; power should hurt.
- ``load_task_model("aligned")``: (model, tokenizer), the shipped checkpoint (trained and cached if missing).
"""

from __future__ import annotations

from typing import Any

from trl_power.tasks.aligned import SumChainTask
from trl_power.tasks.base import VOCABULARY, Example, ReasoningTask
from trl_power.tasks.misaligned import PrecedenceTask

TASKS: dict[str, ReasoningTask] = {t.name: t for t in (SumChainTask(), PrecedenceTask())}


def get_task(name: str) -> ReasoningTask:
    """The registered task called `name` ("aligned" or "misaligned")."""
    if name not in TASKS:
        raise KeyError(f"Unknown task {name!r}; known: {sorted(TASKS)}")
    return TASKS[name]


def list_tasks() -> list[str]:
    return sorted(TASKS)


def load_task_model(task_name: str, train_if_missing: bool = True) -> tuple[Any, Any]:
    """(model, tokenizer) of a task's tiny base model; see `trl_power.tasks.models.load_task_model`."""
    from trl_power.tasks.models import load_task_model as load

    return load(task_name, train_if_missing)


__all__ = [
    "TASKS",
    "VOCABULARY",
    "Example",
    "PrecedenceTask",
    "ReasoningTask",
    "SumChainTask",
    "get_task",
    "list_tasks",
    "load_task_model",
]
