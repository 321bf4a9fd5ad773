"""Math answer checking with `math-verify`: boxed final answers, behind the verifier interface of `trl_power.tasks`.

    verifier = MathVerifier.from_dataset(dataset, prompt_column="prompt", answer_column="answer")
    verifier.verify(prompt, r"... so the answer is \\boxed{\\dfrac{14}{3}}.")     # 1.0 against the gold "\\frac{14}{3}"
    verifier.rewards(prompts, completions)                                       # [1.0, 0.0, ...]

Like an embedded task (`get_task("aligned").verify(prompt, completion)`), a `MathVerifier` scores a completion of a
prompt with 1.0 (right) or 0.0 (wrong or no answer); the gold answer of each prompt comes from the data set it was
built from. The model's answer is the content of the LAST `\\boxed{...}` (or `\\fbox{...}`) of the completion, as in
the Qwen2.5-Math evaluation and the power-sampling reference code; a completion without one scores 0. Equivalence
(fractions, mixed numbers, decimals, intervals, sets, tuples, matrices, units, thousands separators, ...) is decided
by `math-verify` (https://github.com/huggingface/Math-Verify), which must be installed:
`pip install "trl-power[math]"` or `pip install math-verify`.

Gold answers may be a bare LaTeX answer (the `answer` column of MATH-500), a full solution containing `\\boxed{...}`
(the `solution` column of MATH), or a GSM8K answer ending in `#### <number>`.

`PROMPT_TEMPLATES` holds the prompts these models are evaluated with: `"qwen_math"` (the Qwen2.5-Math chain-of-thought
chat prompt: a system message asking for the final answer in `\\boxed{}`) and `"reasoning_with_sampling"` (the plain
text prompt of the power-sampling reference code, Karan & Du 2025, used there with base Qwen2.5-Math models).
"""

from __future__ import annotations

import functools
import json
import threading
from collections.abc import Mapping, Sequence
from typing import Any

from trl_power.prompts import PROMPT_TEMPLATES, QWEN_MATH_SYSTEM_PROMPT  # noqa: E402  (moved; re-exported)

_MISSING = (
    "Math answer checking needs the `math-verify` package, which is not installed. Install it with "
    '`pip install "trl-power[math]"` (or `pip install math-verify`).'
)
_BOX_COMMANDS = ("\\boxed", "\\fbox")


def _math_verify() -> Any:
    try:
        import math_verify
    except ImportError as e:
        raise ImportError(_MISSING) from e
    return math_verify


def is_math_verify_available() -> bool:
    try:
        _math_verify()
    except ImportError:
        return False
    return True


def last_boxed(text: str) -> str | None:
    """The content of the last `\\boxed{...}` / `\\fbox{...}` of `text` (braces balanced), or None."""
    start = max(text.rfind(cmd + "{") for cmd in _BOX_COMMANDS)
    if start < 0:
        return None
    open_at = text.index("{", start)
    depth = 0
    for i in range(open_at, len(text)):
        if text[i] == "{":
            depth += 1
        elif text[i] == "}":
            depth -= 1
            if depth == 0:
                content = text[open_at + 1 : i].strip()
                return content or None
    return None  # unbalanced: the answer was cut off


def gold_answer(gold: str) -> str:
    """The answer part of a gold string: after `####` (GSM8K, thousands separators removed), the last boxed
    content of a solution (MATH), or the string itself (MATH-500 `answer`)."""
    gold = str(gold).strip()
    if "####" in gold:
        return gold.rsplit("####", 1)[1].strip().replace(",", "")
    boxed = last_boxed(gold)
    return boxed if boxed is not None else gold


def _timeouts() -> dict[str, int | None]:
    # math-verify times out with signal.alarm, which works only in the main thread
    main = threading.current_thread() is threading.main_thread()
    return {"parsing_timeout": 5 if main else None}


@functools.lru_cache(maxsize=65536)
def _parse_boxed(content: str) -> tuple:
    mv = _math_verify()
    # math-verify's default normalisation (units, malformed operators such as \frac12, ...), boxed content first
    config = [mv.LatexExtractionConfig(boxed_match_priority=0)]
    return tuple(mv.parse("\\boxed{" + content + "}", extraction_config=config, **_timeouts()))


def check_answer(completion: str, gold: str) -> float:
    """1.0 when the last boxed answer of `completion` equals the gold answer (math-verify), else 0.0.

    Raises `ImportError` with install instructions when `math-verify` is missing, and `ValueError` when the gold
    answer itself cannot be parsed (a data set problem, not a wrong answer)."""
    mv = _math_verify()
    target = _parse_boxed(gold_answer(gold))
    if not target:
        raise ValueError(f"math-verify cannot parse the gold answer {gold!r}.")
    content = last_boxed(_text(completion))
    if content is None:
        return 0.0
    predicted = _parse_boxed(content)
    if not predicted:
        return 0.0
    main = threading.current_thread() is threading.main_thread()
    return float(mv.verify(list(target), list(predicted), timeout_seconds=5 if main else None))


def _text(value: Any) -> str:
    """A completion or prompt as text: strings as they are, conversational messages by their contents."""
    if isinstance(value, str):
        return value
    if isinstance(value, Sequence) and all(isinstance(m, Mapping) and "content" in m for m in value):
        return "\n".join(str(m["content"]) for m in value)
    raise TypeError(f"Expected text or a list of messages, got {type(value).__name__}.")


def _key(prompt: Any) -> str:
    return prompt if isinstance(prompt, str) else json.dumps(prompt, sort_keys=True)


class MathVerifier:
    """Scores completions of math prompts against gold answers, with the interface of `trl_power.tasks` tasks.

    Args:
        answers: gold answer of each prompt (text prompts, or conversational prompts as message lists).
        name: a name for reports and as reward-function name (`__name__`).

    Calling the verifier (`verifier(prompts=..., completions=..., **columns)`) makes it a TRL reward function; the
    gold answers then come from the prompts, or from an `answer` keyword (a data set column) when given.
    """

    def __init__(self, answers: Mapping[Any, str] | Sequence[tuple[Any, str]] = (), name: str = "math"):
        self.name = self.__name__ = name
        self._answers: dict[str, str] = {}
        items = answers.items() if isinstance(answers, Mapping) else answers
        for prompt, gold in items:
            key = _key(prompt)
            if key in self._answers and gold_answer(self._answers[key]) != gold_answer(gold):
                raise ValueError(
                    f"Prompt {key!r:.80} has two different gold answers: {self._answers[key]!r}, {gold!r}."
                )
            self._answers[key] = str(gold)
        _math_verify()  # fail now, not at the first completion, when math-verify is missing

    @classmethod
    def from_dataset(
        cls, dataset: Any, prompt_column: str = "prompt", answer_column: str = "answer", name: str = "math"
    ) -> MathVerifier:
        """A verifier whose gold answers are `dataset[answer_column]`, keyed by `dataset[prompt_column]`."""
        for column in (prompt_column, answer_column):
            if column not in dataset.column_names:
                raise ValueError(
                    f"The data set has no column {column!r} (its columns: {dataset.column_names}); the math verifier "
                    "needs the prompts and their gold answers."
                )
        return cls(zip(dataset[prompt_column], dataset[answer_column]), name=name)

    def gold(self, prompt: Any) -> str:
        key = _key(prompt)
        if key not in self._answers:
            raise KeyError(f"No gold answer for the prompt {key!r:.120}.")
        return self._answers[key]

    def extract_answer(self, completion: Any) -> str | None:
        """The model's final answer: the content of the last boxed expression, or None."""
        return last_boxed(_text(completion))

    def verify(self, prompt: Any, completion: Any) -> float:
        """1.0 when the completion's last boxed answer equals the prompt's gold answer, else 0.0."""
        return check_answer(_text(completion), self.gold(prompt))

    def rewards(self, prompts: Sequence[Any], completions: Sequence[Any]) -> list[float]:
        """`verify` over aligned lists."""
        if len(prompts) != len(completions):
            raise ValueError(f"{len(prompts)} prompts but {len(completions)} completions.")
        return [self.verify(p, c) for p, c in zip(prompts, completions)]

    def __call__(
        self,
        prompts: Sequence[Any],
        completions: Sequence[Any],
        answer: Sequence[str] | None = None,
        **kwargs,
    ) -> list[float]:
        if answer is not None:
            return [check_answer(_text(c), g) for c, g in zip(completions, answer)]
        return self.rewards(prompts, completions)


__all__ = [
    "PROMPT_TEMPLATES",
    "QWEN_MATH_SYSTEM_PROMPT",
    "MathVerifier",
    "check_answer",
    "gold_answer",
    "is_math_verify_available",
    "last_boxed",
]
