"""Exact laws of the samplers on enumerable tiny models, and the statistical tests that compare samples with them.

`MHKernel` builds the Metropolis-Hastings transition matrix of `docs/sampling.md` from the model's exact
next-token conditionals (one no-cache forward per prefix, independent of the samplers' KV-cache engine): states
are every answer of at most H tokens (EOS-ended, or stopped without EOS); from a state y of length L a cut point i
is drawn from q_cut(i | y) (uniform on {0..L-1}, or the entropy law w/L + (1-w) H_i / sum_j H_j with H_i the exact
entropy of p(. | y_<i)), the suffix is drawn from the proposal q up to the rule's horizon (H, or L for the
current-length rules) or EOS, and accepted with the rule's log A. The law of a one-block MH chain after k steps
is mu_0 K^k, mu_0 the proposal's law of a first answer. Mutations (wrong variants of the acceptance) give the
laws that a broken sampler would have, so a test can state its power against them.

`chi_square` compares counts with a law (cells of expected count < 5 pooled), and `chi_square_power` is the
probability that the same test rejects when the samples come from another law (noncentral chi-square with
noncentrality n * sum (alt - law)^2 / law over the same cells).
"""

from __future__ import annotations

import itertools
import math
from collections import Counter
from collections.abc import Mapping, Sequence

import numpy as np
import torch
from scipy import stats

from trl_power.sampling.transformers_engine import proposal_logprobs

MUTATIONS = ("none", "no_length_correction", "no_proposal_correction", "alpha_minus_one")
# entropy cuts with the uniform cuts' correction log(L/L'), or with none
CUT_MUTATIONS = ("uniform_cut_correction", "no_cut_correction")


class MHKernel:
    """Exact MH kernels of one block (block_size >= H) on a tiny model, for prompt `prompt` and vocab `vocab`."""

    def __init__(self, model, prompt: Sequence[int], vocab: int, horizon: int, tau: float, eos: int = 0):
        self.H, self.eos, self.vocab = horizon, eos, vocab
        non_eos = [v for v in range(vocab) if v != eos]
        self.prefixes = [p for n in range(horizon) for p in itertools.product(non_eos, repeat=n)]
        with torch.no_grad():
            self.logp, self.logq = {}, {}
            for prefix in self.prefixes:
                logits = model(input_ids=torch.tensor([list(prompt) + list(prefix)])).logits[0, -1].double()
                self.logp[prefix] = torch.log_softmax(logits, -1).numpy()
                self.logq[prefix] = proposal_logprobs(logits[None].float(), tau)[0].double().numpy()
        self.states = (
            [(*p, eos) for p in self.prefixes]
            + [p for p in self.prefixes if p]
            + [p for p in itertools.product(non_eos, repeat=horizon)]
        )
        self.index = {s: k for k, s in enumerate(self.states)}

    def finished(self, y: tuple) -> bool:
        return bool(y) and y[-1] == self.eos

    def suffix_logs(self, y: tuple, i: int) -> tuple[float, float]:
        """(log p, log q) of y[i:] given y[:i]."""
        lp = sum(self.logp[y[:t]][y[t]] for t in range(i, len(y)))
        lq = sum(self.logq[y[:t]][y[t]] for t in range(i, len(y)))
        return lp, lq

    def proposals(self, prefix: tuple, stop: int) -> list[tuple[tuple, float]]:
        """Every continuation of `prefix` drawn from q up to length `stop` or EOS, with its probability."""
        out, frontier = [], [(prefix, 0.0)]
        while frontier:
            nxt = []
            for seq, lq in frontier:
                for v in range(self.vocab):
                    s, lq_s = (*seq, v), lq + self.logq[seq][v]
                    if v == self.eos or len(s) == stop:
                        out.append((s, math.exp(lq_s)))
                    else:
                        nxt.append((s, lq_s))
            frontier = nxt
        return out

    def cut_law(self, y: tuple, cut: str, uniform_weight: float) -> list[float]:
        """q_cut(. | y) over the L positions of y."""
        L = len(y)
        if cut == "uniform":
            return [1.0 / L] * L
        h = [float(-(np.exp(self.logp[y[:i]]) * self.logp[y[:i]]).sum()) for i in range(L)]
        total = sum(h)
        if total <= 0:
            return [1.0 / L] * L
        return [uniform_weight / L + (1 - uniform_weight) * x / total for x in h]

    def matrix(
        self,
        alpha: float,
        rule: str = "horizon",
        finished_only: bool = True,
        mutation: str = "none",
        cut: str = "uniform",
        uniform_weight: float = 0.25,
    ) -> np.ndarray:
        assert mutation in MUTATIONS + CUT_MUTATIONS
        a = alpha - 1 if mutation == "alpha_minus_one" else alpha
        K = np.zeros((len(self.states), len(self.states)))
        for y, row in self.index.items():
            L = len(y)
            forward = self.cut_law(y, cut, uniform_weight)
            for i in range(L):
                stop = self.H if rule == "horizon" else L
                for y_new, prob in self.proposals(y[:i], stop):
                    lp_new, lq_new = self.suffix_logs(y_new, i)
                    if rule == "current_length":  # the current answer's terms over [i, L') only
                        old = y[: len(y_new)]
                    else:
                        old = y
                    lp_old, lq_old = self.suffix_logs(old, i)
                    log_a = a * (lp_new - lp_old)
                    if mutation != "no_proposal_correction":
                        log_a += lq_old - lq_new
                    if rule == "horizon" and mutation != "no_length_correction":
                        if cut == "uniform" or mutation == "uniform_cut_correction":
                            log_a += math.log(L) - math.log(len(y_new))
                        elif mutation != "no_cut_correction":
                            log_a += math.log(self.cut_law(y_new, cut, uniform_weight)[i]) - math.log(
                                forward[i]
                            )
                    if finished_only and not self.finished(y_new):
                        log_a = -math.inf
                    elif finished_only and not self.finished(y):
                        log_a = math.inf
                    acc = 1.0 if log_a >= 0 else math.exp(log_a)
                    K[row, self.index[y_new]] += prob * acc * forward[i]
                    K[row, row] += prob * (1 - acc) * forward[i]
        return K

    def initial_law(self) -> np.ndarray:
        mu = np.zeros(len(self.states))
        for y, prob in self.proposals((), self.H):
            mu[self.index[y]] += prob
        return mu

    def law_after(self, steps: int, alpha: float, **kwargs) -> dict[tuple, float]:
        mu = self.initial_law() @ np.linalg.matrix_power(self.matrix(alpha, **kwargs), steps)
        return {s: float(m) for s, m in zip(self.states, mu) if m > 0}

    def power_law(self, alpha: float, finished_only: bool = True) -> dict[tuple, float]:
        """p^alpha over the horizon's answers (finished ones only, or the power of p truncated at H)."""
        keys = [s for s in self.states if self.finished(s) or len(s) == self.H]
        if finished_only:
            keys = [s for s in keys if self.finished(s)]
        lw = np.array([alpha * self.suffix_logs(s, 0)[0] for s in keys])
        w = np.exp(lw - lw.max())
        return dict(zip(keys, (w / w.sum()).tolist()))

    def as_vector(self, law: Mapping[tuple, float]) -> np.ndarray:
        v = np.zeros(len(self.states))
        for s, m in law.items():
            v[self.index[s]] = m
        return v


def _cells(law: Mapping, n: int, min_expected: float = 5.0) -> tuple[list, list]:
    """Cells of expected count >= min_expected, and the rest pooled into one (if it reaches min_expected)."""
    big = [k for k, m in law.items() if n * m >= min_expected]
    small = [k for k in law if k not in set(big)]
    return big, small


def chi_square(samples: Sequence[Sequence[int]], law: Mapping[tuple, float]) -> tuple[float, int, float]:
    """Pearson's chi-square of the samples' counts against `law`: (statistic, degrees of freedom, p-value).
    A sample outside the law's support makes the p-value 0."""
    n = len(samples)
    counts = Counter(tuple(int(t) for t in s) for s in samples)
    if any(k not in law or law[k] == 0 for k in counts):
        return math.inf, 0, 0.0
    big, small = _cells(law, n)
    obs = [counts.get(k, 0) for k in big]
    exp = [n * law[k] for k in big]
    if small:
        obs.append(sum(counts.get(k, 0) for k in small))
        exp.append(n * sum(law[k] for k in small))
    obs, exp = np.array(obs, dtype=float), np.array(exp)
    stat = float(((obs - exp) ** 2 / exp).sum())
    df = len(obs) - 1
    return stat, df, float(stats.chi2.sf(stat, df))


def chi_square_power(law: Mapping, alternative: Mapping, n: int, level: float) -> float:
    """P(chi_square rejects at `level` | n samples from `alternative`), by the noncentral chi-square
    approximation (a sample outside the law's support rejects outright: that probability is added)."""
    big, small = _cells(law, n)
    groups = [[k] for k in big] + ([small] if small else [])
    p0 = np.array([sum(law[k] for k in g) for g in groups])
    p1 = np.array([sum(alternative.get(k, 0.0) for k in g) for g in groups])
    outside = sum(m for k, m in alternative.items() if law.get(k, 0.0) == 0)
    df = len(groups) - 1
    critical = stats.chi2.isf(level, df)
    lam = n * float(((p1 - p0) ** 2 / p0).sum())
    inside = float(stats.ncx2.sf(critical, df, lam)) if lam > 0 else level
    return 1 - (1 - inside) * (1 - outside) ** n


def total_variation_vec(a: np.ndarray, b: np.ndarray) -> float:
    return 0.5 * float(np.abs(a - b).sum())
