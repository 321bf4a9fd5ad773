"""The *aligned* task: a running sum mod 10, where the likeliest answer is the right one, behind a trap.

Prompt ``sum a b c d :`` (digits). True answer (a + b + c + d) mod 10. Completions have two branches, chosen
by the first word:

- ``step`` (mass 1 - trap_mass): a careful trace ``step a + b = s1 ; s1 + c = s2 ; s2 + d = s3 ; answer s3``.
  Each of the 3 step results is wrong with probability `step_error` (then uniform over the 9 wrong digits),
  and later steps carry the error on. The error-free trace is ONE strong sequence of probability
  (1 - trap_mass) * (1 - step_error)^3.
- ``guess`` (mass trap_mass > 1/2): the same template with the 3 results drawn uniformly over 10 digits,
  i.e. 1000 weak sequences of probability trap_mass / 1000 each, right only by chance (1/10).

So the first decisive word is a trap for per-token sharpening: ``guess`` is the heavier token (it has many
mediocre continuations), low temperature prefers it, while p^alpha prefers the one strong ``step`` trace.
Low temperature still beats plain sampling because it removes the step errors inside the ``step`` branch.
With the defaults (trap 0.55, step error 0.25, alpha 4) an ideal model gives: plain 0.25, low temperature
0.38, power 1.00 (see `ReasoningTask.trace_statistics`).
"""

from __future__ import annotations

import itertools
import random
from dataclasses import dataclass

from trl_power.tasks.base import Problem, ReasoningTask

NUM_OPERANDS = 4


def _trace(mode: str, problem: Problem, results: tuple[int, ...]) -> str:
    steps, partial = [], problem[0]
    for x, s in zip(problem[1:], results):
        steps.append(f"{partial} + {x} = {s}")
        partial = s
    return f"{mode} " + " ; ".join(steps) + f" ; answer {partial}"


@dataclass(frozen=True)
class SumChainTask(ReasoningTask):
    """Running sum mod 10 with a ``guess`` trap (see the module docstring).

    Attributes:
        trap_mass: probability of the ``guess`` branch (> 1/2 makes it the heavier first token).
        step_error: per-step error rate of the ``step`` branch.
    """

    name: str = "aligned"
    description: str = (
        "running sum mod 10; the likeliest trace is correct but hides behind a heavier 'guess' token"
    )
    trap_mass: float = 0.55
    step_error: float = 0.25

    def all_problems(self) -> list[Problem]:
        return list(itertools.product(range(10), repeat=NUM_OPERANDS))

    def format_prompt(self, problem: Problem) -> str:
        return "sum " + " ".join(str(d) for d in problem) + " :"

    def parse_prompt(self, prompt: str) -> Problem:
        words = prompt.split()
        if (
            len(words) != NUM_OPERANDS + 2
            or words[0] != "sum"
            or words[-1] != ":"
            or not all(w.isdigit() and len(w) == 1 for w in words[1:-1])
        ):
            raise ValueError(f"Not a prompt of the {self.name!r} task: {prompt!r}")
        return tuple(int(w) for w in words[1:-1])

    def solve(self, problem: Problem) -> int:
        return sum(problem) % 10

    def _step_prob(self, partial: int, x: int, result: int) -> float:
        return 1 - self.step_error if result == (partial + x) % 10 else self.step_error / 9

    def trace_distribution(self, problem: Problem) -> dict[str, tuple[float, str]]:
        dist: dict[str, tuple[float, str]] = {}
        for results in itertools.product(range(10), repeat=NUM_OPERANDS - 1):
            dist[_trace("guess", problem, results)] = (self.trap_mass / 10 ** len(results), "guess")
            prob, partial = 1 - self.trap_mass, problem[0]
            for x, s in zip(problem[1:], results):
                prob *= self._step_prob(partial, x, s)
                partial = s
            dist[_trace("step", problem, results)] = (prob, "step")
        return dist

    def sample_trace(self, problem: Problem, rng: random.Random) -> tuple[str, str]:
        mode = "guess" if rng.random() < self.trap_mass else "step"
        results, partial = [], problem[0]
        for x in problem[1:]:
            if mode == "guess":
                s = rng.randrange(10)
            elif rng.random() < self.step_error:
                s = (partial + x + 1 + rng.randrange(9)) % 10  # uniform over the 9 wrong digits
            else:
                s = (partial + x) % 10
            results.append(s)
            partial = s
        return _trace(mode, problem, tuple(results)), mode
