"""Few-shot single-digit arithmetic, the real-model task: a base model completes "a+b=" or "a-b=" after three solved
examples, one per line, and its answer is the text before the first newline.

    3+5=8
    9-4=5
    2+7=9
    6+1=

Problems: a+b for digits a, b (answers 0..18) and a-b for digits a >= b (answers 0..9): 155 in all, split once by a
seeded shuffle into 64 held-out problems (the prompts every evaluation uses) and 91 training problems (their
prompts are the training prompts of the trainers; the shots of every prompt come from the training problems, never
from the held-out ones, and never the question itself). Word-free on purpose: Gemma 3 270M is in range for it
(greedy ~0.7, BENCHMARKS.md §8) and the answer needs no parsing beyond one line.
"""

from __future__ import annotations

import random
import re
from collections.abc import Sequence
from dataclasses import dataclass

Problem = tuple[int, str, int]
_QUESTION = re.compile(r"(\d)([+-])(\d)=$")


@dataclass(frozen=True)
class FewShotArithmetic:
    """The task (see the module docstring).

    Attributes:
        name: the verifier name (`verifier: arithmetic` in the recipes).
        shots: solved examples before the question.
        eval_size: held-out problems.
        split_seed: seed of the train / held-out split and of each prompt's shots.
        stop_strings: where an answer ends (a base model rarely emits EOS after one).
        max_new_tokens: a budget every answer fits in (two digits and the newline, with slack).
    """

    name: str = "arithmetic"
    shots: int = 3
    eval_size: int = 64
    split_seed: int = 0
    stop_strings: tuple[str, ...] = ("\n",)
    max_new_tokens: int = 6

    def all_problems(self) -> list[Problem]:
        sums = [(a, "+", b) for a in range(10) for b in range(10)]
        return sums + [(a, "-", b) for a in range(10) for b in range(a + 1)]

    @staticmethod
    def solve(problem: Problem) -> int:
        a, op, b = problem
        return a + b if op == "+" else a - b

    @staticmethod
    def line(problem: Problem) -> str:
        a, op, b = problem
        return f"{a}{op}{b}="

    def split(self, part: str) -> list[Problem]:
        """The problems of `part` ("train" or "eval")."""
        problems = self.all_problems()
        random.Random(self.split_seed).shuffle(problems)
        if part == "eval":
            return problems[: self.eval_size]
        if part == "train":
            return problems[self.eval_size :]
        raise ValueError(f"part must be 'train' or 'eval', got {part!r}")

    def format_prompt(self, problem: Problem) -> str:
        """`shots` solved training problems (drawn by a generator seeded by the problem), then the question."""
        pool = [p for p in self.split("train") if p != problem]
        rng = random.Random(f"{self.split_seed}:{self.line(problem)}")
        shots = rng.sample(pool, self.shots)
        return "".join(f"{self.line(p)}{self.solve(p)}\n" for p in shots) + self.line(problem)

    def prompts(self, part: str, n: int | None = None) -> list[str]:
        """The prompts of `part` (the first `n` of them)."""
        problems = self.split(part)
        if n is not None and n > len(problems):
            raise ValueError(f"The {part} split has {len(problems)} problems, asked for {n}.")
        return [self.format_prompt(p) for p in problems[:n]]

    def parse_prompt(self, prompt: str) -> Problem:
        match = _QUESTION.search(prompt)
        if match is None:
            raise ValueError(
                f"Not an arithmetic prompt (its last line must be like '3+4='): {prompt[-20:]!r}"
            )
        return int(match.group(1)), match.group(2), int(match.group(3))

    @staticmethod
    def extract_answer(completion: str) -> int | None:
        """The integer before the first newline (spaces around it allowed), or None."""
        text = completion.split("\n", 1)[0].strip()
        return int(text) if re.fullmatch(r"-?\d+", text) else None

    def verify(self, prompt: str, completion: str) -> float:
        """1.0 when the first line of the completion is the true answer."""
        try:
            problem = self.parse_prompt(prompt)
        except ValueError:
            return 0.0
        return float(self.extract_answer(completion) == self.solve(problem))

    def rewards(self, prompts: Sequence[str], completions: Sequence[str]) -> list[float]:
        return [self.verify(p, c) for p, c in zip(prompts, completions)]
