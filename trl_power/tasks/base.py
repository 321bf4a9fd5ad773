"""What every synthetic reasoning task shares: problems, prompts, a verifier and a shaped corpus.

A task is a set of problems (tuples of digit operands). Each problem has one prompt string, one true answer
(a digit), and a *trace distribution* q(y|x): the exact distribution over completions from which its corpus
is drawn. The base model is trained by maximum likelihood on that corpus, so it learns p(y|x) ≈ q(y|x);
the noise of q is what shapes the base model's power distribution on purpose.

The problems are split once, by a seeded shuffle, into a train part (the corpus uses only these) and a
held-out eval part (the prompts every evaluation uses), so the model is always evaluated on prompts it
never saw.

Completions are whitespace-separated words; the verifier reads the last two words, which must be
``answer <digit>``. Anything else is malformed and scores 0.
"""

from __future__ import annotations

import math
import random
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

DIGITS = tuple(str(d) for d in range(10))
#: One word list for every task, so every task model shares one tokenizer layout.
VOCABULARY: tuple[str, ...] = (
    *DIGITS,
    "+",
    "*",
    "=",
    ";",
    ":",
    "answer",
    "sum",
    "eval",
    "step",
    "guess",
)
SPECIAL_WORDS = ("<eos>", "<pad>")

Problem = tuple[int, ...]


@dataclass(frozen=True)
class Example:
    """One corpus line: prompt, completion, and which branch of the trace distribution produced it."""

    prompt: str
    completion: str
    kind: str
    correct: bool


@dataclass(frozen=True)
class ReasoningTask:
    """Base class of the synthetic tasks (subclasses define the problems, prompts and trace noise).

    Attributes:
        name: registry name.
        alpha: the power the task is designed to be evaluated at (low temperature means tau = 1/alpha).
        max_new_tokens: a budget every correct completion fits in (EOS included), with some slack.
        eval_fraction: share of the problems held out from the corpus for evaluation.
        split_seed: seed of the shuffle that splits problems into train and eval.
    """

    name: str = ""
    description: str = ""
    alpha: float = 4.0
    max_new_tokens: int = 28
    eval_fraction: float = 0.1
    split_seed: int = 1234

    # ----- to define in subclasses ------------------------------------------------------------------

    def all_problems(self) -> list[Problem]:
        raise NotImplementedError

    def format_prompt(self, problem: Problem) -> str:
        raise NotImplementedError

    def parse_prompt(self, prompt: str) -> Problem:
        raise NotImplementedError

    def solve(self, problem: Problem) -> int:
        """The true answer (a digit)."""
        raise NotImplementedError

    def trace_distribution(self, problem: Problem) -> dict[str, tuple[float, str]]:
        """The exact corpus distribution q(y|x): {completion text: (probability, kind)}, summing to 1."""
        raise NotImplementedError

    def sample_trace(self, problem: Problem, rng: random.Random) -> tuple[str, str]:
        """One completion y ~ q(.|x) and its kind (the branch of q that produced it)."""
        raise NotImplementedError

    # ----- shared -----------------------------------------------------------------------------------

    @property
    def vocabulary(self) -> tuple[str, ...]:
        return VOCABULARY

    def split(self, part: str) -> list[Problem]:
        """The problems of `part` ("train" or "eval"): a seeded shuffle, the first `eval_fraction` is eval."""
        problems = sorted(self.all_problems())
        random.Random(self.split_seed).shuffle(problems)
        n_eval = max(1, int(round(self.eval_fraction * len(problems))))
        if part == "eval":
            return problems[:n_eval]
        if part == "train":
            return problems[n_eval:]
        raise ValueError(f"part must be 'train' or 'eval', got {part!r}")

    def eval_prompts(self, n: int, seed: int = 0) -> list[str]:
        """`n` distinct held-out prompts (a seeded draw without replacement from the eval problems)."""
        problems = self.split("eval")
        if n > len(problems):
            raise ValueError(f"Task {self.name!r} has only {len(problems)} eval prompts, asked for {n}.")
        return [self.format_prompt(p) for p in random.Random(seed).sample(problems, n)]

    def corpus(self, n: int, seed: int = 0) -> list[Example]:
        """`n` training lines: a problem uniform over the train split, then a completion y ~ q(.|x)."""
        return list(self.iter_corpus(n, seed))

    def iter_corpus(self, n: int, seed: int = 0) -> Iterator[Example]:
        rng = random.Random(seed)
        problems = self.split("train")
        for _ in range(n):
            problem = problems[rng.randrange(len(problems))]
            completion, kind = self.sample_trace(problem, rng)
            prompt = self.format_prompt(problem)
            yield Example(prompt, completion, kind, self.verify(prompt, completion) == 1.0)

    def extract_answer(self, completion: str) -> int | None:
        """The final answer: the digit after a closing ``answer``, or None when malformed.

        Special words (``<eos>``, ``<pad>``) at the end are ignored, so decoded text with or without
        ``skip_special_tokens`` gives the same result.
        """
        words = completion.split()
        while words and words[-1] in SPECIAL_WORDS:
            words.pop()
        if any(w in SPECIAL_WORDS for w in words):
            return None
        if len(words) < 2 or words[-2] != "answer" or words[-1] not in DIGITS:
            return None
        return int(words[-1])

    def verify(self, prompt: str, completion: str) -> float:
        """1.0 when the completion ends in ``answer <true answer>``, 0.0 when wrong or malformed."""
        try:
            problem = self.parse_prompt(prompt)
        except ValueError:
            return 0.0
        answer = self.extract_answer(completion)
        return float(answer is not None and answer == self.solve(problem))

    def rewards(self, prompts: Sequence[str], completions: Sequence[str]) -> list[float]:
        """`verify` over aligned lists (a reward function for trainers and evaluation)."""
        return [self.verify(p, c) for p, c in zip(prompts, completions)]

    # ----- the trace distribution as numbers ----------------------------------------------------------

    def trace_statistics(self, problem: Problem, alpha: float | None = None) -> dict[str, Any]:
        """Exact accuracies of an ideal model p = q on one problem.

        - plain: E_q[r];  power: E_{q_alpha}[r], q_alpha ∝ q^alpha;
        - low temperature: per-token softmax(log q(y_t|y_<t) * alpha), i.e. tau = 1/alpha;
        - the mass and log q of the most likely completion, and the entropy H(q) in nats.
        """
        alpha = self.alpha if alpha is None else alpha
        dist = self.trace_distribution(problem)
        prompt = self.format_prompt(problem)
        texts = list(dist)
        probs = [dist[t][0] for t in texts]
        reward = [self.verify(prompt, t) for t in texts]
        plain = sum(p * r for p, r in zip(probs, reward))
        top = max(probs)
        pw = [(p / top) ** alpha for p in probs]
        power = sum(w * r for w, r in zip(pw, reward)) / sum(pw)
        low = _tempered_sequence_probs(texts, probs, alpha)
        return {
            "plain": plain,
            "power": power,
            "low_temperature": sum(q * r for q, r in zip(low, reward)),
            "top_mass": top,
            "top_correct": bool(reward[probs.index(top)]),
            "entropy": -sum(p * math.log(p) for p in probs if p > 0),
            "num_completions": len(texts),
        }


def _tempered_sequence_probs(texts: list[str], probs: list[float], alpha: float) -> list[float]:
    """Probability of each completion under per-token sharpening q(y_t|y_<t)^alpha / normaliser.

    Built from the prefix tree of the completions (word level, EOS implicit at the end of each text).
    """
    seqs = [tuple(t.split()) + ("<eos>",) for t in texts]
    prefix_mass: dict[tuple[str, ...], float] = {}
    for s, p in zip(seqs, probs):
        for i in range(len(s) + 1):
            prefix_mass[s[:i]] = prefix_mass.get(s[:i], 0.0) + p
    children: dict[tuple[str, ...], list[tuple[str, ...]]] = {}
    for pre in prefix_mass:
        if pre:
            children.setdefault(pre[:-1], []).append(pre)
    out = []
    for s in seqs:
        prob = 1.0
        for i in range(len(s)):
            parent = s[:i]
            z = sum(prefix_mass[c] ** alpha for c in children[parent])
            prob *= prefix_mass[s[: i + 1]] ** alpha / z
        out.append(prob)
    return out
