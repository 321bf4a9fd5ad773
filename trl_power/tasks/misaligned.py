"""The *misaligned* task: operator precedence mod 10, where the likeliest trace is a wrong shortcut.

Prompt ``eval a * b + c * d :`` (digits). True answer (a*b + c*d) mod 10. Completions:

- the shortcut (mass `shortcut_mass`): left-to-right evaluation, ignoring precedence, always written the
  same canonical way ``a * b = t ; t + c = u ; u * d = v ; answer v``: ONE strong wrong sequence.
- correct traces (mass 1 - shortcut_mass), uniform over 16 ways of writing the same computation: which
  product first (2), the operand order inside each product (2 x 2) and inside the final sum (2):
  ``c * d = q ; b * a = p ; q + p = r ; answer r``. Each of them is weaker than the shortcut.

Only problems where the shortcut answer (a*b + c) * d differs from the true answer, and where the 16
correct traces are distinct strings (a != b, c != d, a*b != c*d mod 10), are used: the shortcut is always
wrong, and always 0.3 / 0.04375 ≈ 7 times likelier than any correct trace. Sharpening towards likely
sequences concentrates on the shortcut: accuracy drops and Cov_{p_s}(r, log p) < 0. With the defaults (shortcut 0.3, alpha 4) an ideal model gives, averaged over
the held-out problems: plain 0.70, power 0.007, low temperature 0.10 (the shortcut shares its first step
with 4 of the correct traces, so per-token sharpening is drawn to it too).
"""

from __future__ import annotations

import itertools
import random
from dataclasses import dataclass

from trl_power.tasks.base import Problem, ReasoningTask


def _shortcut(problem: Problem) -> tuple[str, int]:
    a, b, c, d = problem
    t = a * b % 10
    u = (t + c) % 10
    v = u * d % 10
    return f"{a} * {b} = {t} ; {t} + {c} = {u} ; {u} * {d} = {v} ; answer {v}", v


def _is_clean(problem: Problem) -> bool:
    """The shortcut is wrong, and the 16 correct traces are 16 distinct strings (a != b, c != d, a*b != c*d
    mod 10), so that each has mass (1 - shortcut_mass) / 16."""
    a, b, c, d = problem
    return _shortcut(problem)[1] != (a * b + c * d) % 10 and a != b and c != d and a * b % 10 != c * d % 10


def _correct_traces(problem: Problem) -> list[str]:
    """The 16 orderings of the correct computation."""
    a, b, c, d = problem
    products = [((a, b), a * b % 10), ((c, d), c * d % 10)]
    r = (products[0][1] + products[1][1]) % 10
    out = []
    for first, second in (products, products[::-1]):
        for swap1, swap2, swap_sum in itertools.product((False, True), repeat=3):
            (x1, y1), p1 = first
            (x2, y2), p2 = second
            if swap1:
                x1, y1 = y1, x1
            if swap2:
                x2, y2 = y2, x2
            s1, s2 = (p2, p1) if swap_sum else (p1, p2)
            out.append(f"{x1} * {y1} = {p1} ; {x2} * {y2} = {p2} ; {s1} + {s2} = {r} ; answer {r}")
    return out


@dataclass(frozen=True)
class PrecedenceTask(ReasoningTask):
    """a*b + c*d mod 10 with a canonical left-to-right shortcut (see the module docstring).

    Attributes:
        shortcut_mass: probability of the shortcut trace.
    """

    name: str = "misaligned"
    description: str = "a*b + c*d mod 10; the likeliest trace is a canonical wrong left-to-right shortcut"
    shortcut_mass: float = 0.3

    def all_problems(self) -> list[Problem]:
        return [p for p in itertools.product(range(10), repeat=4) if _is_clean(p)]

    def format_prompt(self, problem: Problem) -> str:
        a, b, c, d = problem
        return f"eval {a} * {b} + {c} * {d} :"

    def parse_prompt(self, prompt: str) -> Problem:
        w = prompt.split()
        ok = (
            len(w) == 9
            and w[0] == "eval"
            and w[2] == "*"
            and w[4] == "+"
            and w[6] == "*"
            and w[8] == ":"
            and all(w[i].isdigit() and len(w[i]) == 1 for i in (1, 3, 5, 7))
        )
        if not ok:
            raise ValueError(f"Not a prompt of the {self.name!r} task: {prompt!r}")
        return tuple(int(w[i]) for i in (1, 3, 5, 7))

    def solve(self, problem: Problem) -> int:
        a, b, c, d = problem
        return (a * b + c * d) % 10

    def trace_distribution(self, problem: Problem) -> dict[str, tuple[float, str]]:
        dist: dict[str, tuple[float, str]] = {_shortcut(problem)[0]: (self.shortcut_mass, "shortcut")}
        traces = _correct_traces(problem)
        for t in traces:
            prev = dist.get(t, (0.0, "correct"))[0]
            dist[t] = (prev + (1 - self.shortcut_mass) / len(traces), "correct")
        return dist

    def sample_trace(self, problem: Problem, rng: random.Random) -> tuple[str, str]:
        if rng.random() < self.shortcut_mass:
            return _shortcut(problem)[0], "shortcut"
        traces = _correct_traces(problem)
        return traces[rng.randrange(len(traces))], "correct"
