"""Verifiers: what checks an answer. Each has `verify(prompt, completion) -> float` (1.0 right, 0.0 wrong) and
`rewards(prompts, completions) -> list[float]`:

- `"math"`: `trl_power.math_verifier.MathVerifier`, the last `\\boxed{}` answer against the gold answer of the prompt,
  from a data set's answer column (MATH-500's `answer`, MATH's `solution`, GSM8K's `#### n`);
- an embedded task name (`aligned`, `misaligned`): the task's own verifier (`trl_power.tasks`);
- `"arithmetic"`: few-shot single-digit arithmetic for base models (`trl_power.tasks.arithmetic`, the real-model task).

`as_reward_function` makes one a TRL reward function (`prompts`, `completions`, the data set's columns).
"""

from __future__ import annotations

from typing import Any


def get_verifier(name: str | None, answer_column: str | None = None, *datasets: Any) -> Any:
    """The verifier called `name` (None for None). `math` takes its gold answers from the `answer_column` of the
    prompt data sets given (their `prompt` column is the key); a `ValueError` names the choices otherwise."""
    if name is None:
        return None
    if name == "math":
        from datasets import concatenate_datasets

        from trl_power.math_verifier import MathVerifier

        if not answer_column:
            raise ValueError("verifier 'math' needs answer_column, the column with the gold answers.")
        data = concatenate_datasets([d.select_columns(["prompt", answer_column]) for d in datasets])
        return MathVerifier.from_dataset(data, "prompt", answer_column)
    if name == "arithmetic":
        from trl_power.tasks.arithmetic import FewShotArithmetic

        return FewShotArithmetic()
    from trl_power.tasks import get_task, list_tasks

    if name not in list_tasks():
        raise ValueError(
            f"verifier must be 'math', 'arithmetic' or a task name {list_tasks()}, got {name!r}."
        )
    return get_task(name)


def as_reward_function(verifier: Any) -> Any:
    """The verifier as a TRL reward function (called with `prompts`, `completions` and the data set columns)."""
    if callable(verifier):  # MathVerifier
        return verifier

    def accuracy(prompts: list, completions: list, **kwargs: Any) -> list[float]:
        return verifier.rewards(prompts, completions)

    accuracy.__name__ = f"{verifier.name}_accuracy"
    return accuracy
