"""Synthetic reasoning tasks with verifiable answers, and the tiny base models trained on them.

get_task("aligned")      running sum mod 10: power sampling should help (a trap for low temperature)
get_task("misaligned")   a*b + c*d mod 10: the likeliest trace is a wrong shortcut; power should hurt
"""

from __future__ import annotations

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


__all__ = [
    "TASKS",
    "VOCABULARY",
    "Example",
    "PrecedenceTask",
    "ReasoningTask",
    "SumChainTask",
    "get_task",
    "list_tasks",
]
