"""Evaluation of answers against a verifier, and the covariance diagnostic of power sampling.

Answers come grouped by prompt: `rewards[i][j]` is the verifier's reward (1 right, 0 wrong) of answer j to
prompt i. Every average below weights prompts equally.

- accuracy = (1/P) sum_i mean_j r_ij, with standard error sd_i(mean_j r_ij) / sqrt(P).
- pass@k: the unbiased estimator 1 - C(n - c, k) / C(n, k) for a prompt with n answers, c of them right
  (Chen et al. 2021), averaged over prompts.
- self-reward: log p_base(y|x), the sequence log-probability of an answer under the base model.
- cost: tokens forwarded through the model and wall-clock seconds, per answer.
- the covariance diagnostic (will power sampling help?) is `trl_power.diagnostic`; `covariance_diagnostic` and
  `CovarianceDiagnostic` import from here too.
- compute-matched baselines: best-of-n by self-reward and majority vote@n over plain samples (`best_of_n`,
  `majority_vote`), and a paired comparison of two methods on the same prompts (`paired_test`).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

ArrayLike = Sequence[float] | Sequence[Sequence[float]] | np.ndarray


def pass_at_k(n: int, c: int, k: int) -> float:
    """Unbiased pass@k of one prompt with `n` answers, `c` right: 1 - C(n-c, k) / C(n, k).

    It is the probability that k answers drawn without replacement from the n contain a right one.
    Computed as 1 - prod_{i=n-c+1}^{n} (1 - k/i), which avoids huge binomials.
    """
    if not 0 <= c <= n:
        raise ValueError(f"need 0 <= c <= n, got c={c}, n={n}")
    if not 1 <= k <= n:
        raise ValueError(f"need 1 <= k <= n, got k={k}, n={n}")
    if n - c < k:
        return 1.0
    return float(1.0 - np.prod(1.0 - k / np.arange(n - c + 1, n + 1)))


def as_groups(values: Any) -> list[np.ndarray]:
    """Rewards as a list of 1-D arrays, one per prompt (a flat list is one prompt)."""
    if isinstance(values, np.ndarray):
        return (
            [np.asarray(v, dtype=np.float64) for v in values]
            if values.ndim == 2
            else [values.astype(np.float64)]
        )
    values = list(values)
    if values and isinstance(values[0], Sequence | np.ndarray):
        return [np.asarray(v, dtype=np.float64) for v in values]
    return [np.asarray(values, dtype=np.float64)]


def accuracy(rewards: ArrayLike) -> float:
    """(1/P) sum_i mean_j r_ij: the mean reward, each prompt weighted equally."""
    groups = as_groups(rewards)
    if not groups or any(g.size == 0 for g in groups):
        raise ValueError("Every prompt needs at least one answer.")
    return float(np.mean([g.mean() for g in groups]))


def mean_pass_at_k(rewards: ArrayLike, k: int) -> float:
    """pass@k averaged over prompts; an answer counts as right when its reward is >= 0.5."""
    groups = as_groups(rewards)
    return float(np.mean([pass_at_k(g.size, int((g >= 0.5).sum()), k) for g in groups]))


@dataclass
class MethodResult:
    """What one decoding method achieved on a task.

    Attributes:
        method: name of the method ("plain", "low_temperature", "mh", ...).
        accuracy: mean verifier reward, prompts weighted equally; accuracy_stderr its standard error.
        pass_at_k: {k: unbiased pass@k averaged over prompts}.
        mean_self_reward: mean of log p_base(y|x) (sequence sum, nats) over answers.
        tokens_per_answer: tokens forwarded through the model per answer (all proposals, prefixes and
            re-reads included: the compute cost, not the answer length).
        seconds_per_answer: wall-clock seconds per answer.
        num_prompts, num_answers: sizes.
        extra: anything else a method wants to report (acceptance rate, ESS, ...).
    """

    method: str
    accuracy: float
    accuracy_stderr: float
    pass_at_k: dict[int, float]
    mean_self_reward: float
    tokens_per_answer: float
    seconds_per_answer: float
    num_prompts: int
    num_answers: int
    extra: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def evaluate_method(
    method: str,
    rewards: ArrayLike,
    self_rewards: ArrayLike,
    tokens_forwarded: float,
    seconds: float,
    ks: Sequence[int] = (1, 4, 8),
    extra: Mapping[str, Any] | None = None,
) -> MethodResult:
    """A `MethodResult` from per-prompt rewards and base log-probs of the answers, and the total cost.

    pass@k is reported for every k in `ks` that is <= the smallest number of answers per prompt.
    """
    groups = as_groups(rewards)
    lp = np.concatenate(as_groups(self_rewards))
    num_answers = sum(g.size for g in groups)
    if lp.size != num_answers:
        raise ValueError(f"{num_answers} rewards but {lp.size} self-rewards")
    per_prompt = np.array([g.mean() for g in groups])
    n_min = min(g.size for g in groups)
    return MethodResult(
        method=method,
        accuracy=float(per_prompt.mean()),
        accuracy_stderr=float(per_prompt.std(ddof=1) / math.sqrt(len(groups)))
        if len(groups) > 1
        else math.nan,
        pass_at_k={k: mean_pass_at_k(groups, k) for k in ks if k <= n_min},
        mean_self_reward=float(lp.mean()),
        tokens_per_answer=float(tokens_forwarded) / num_answers,
        seconds_per_answer=float(seconds) / num_answers,
        num_prompts=len(groups),
        num_answers=num_answers,
        extra=dict(extra or {}),
    )


def group_by_prompt(
    values: Sequence[Any], prompt_indices: Sequence[int], num_prompts: int
) -> list[list[Any]]:
    """Flat per-answer values (rewards, log-probs, texts) -> one list per prompt, in order (`prompt_indices[k]` owns
    `values[k]`)."""
    if len(values) != len(prompt_indices):
        raise ValueError(f"{len(values)} values but {len(prompt_indices)} prompt indices")
    out: list[list[Any]] = [[] for _ in range(num_prompts)]
    for v, i in zip(values, prompt_indices):
        out[int(i)].append(v)
    return out


def evaluate_answers(
    method: str,
    prompt_indices: Sequence[int],
    rewards: Sequence[float],
    self_rewards: Sequence[float],
    tokens_forwarded: float,
    seconds: float,
    ks: Sequence[int] = (1, 4, 8),
    extra: Mapping[str, Any] | None = None,
) -> MethodResult:
    """A `MethodResult` from flat per-answer values (answer k answers prompt `prompt_indices[k]`): the one way answers
    are evaluated, whether they come from a `PowerSamplingOutput` (`evaluate_sampling_output`) or a data set of scored
    answers (`scripts/evaluate.py`). Prompts without answers are left out."""
    num_prompts = max(int(i) for i in prompt_indices) + 1
    grouped = [g for g in group_by_prompt(rewards, prompt_indices, num_prompts) if g]
    lps = [g for g in group_by_prompt(self_rewards, prompt_indices, num_prompts) if g]
    return evaluate_method(method, grouped, lps, tokens_forwarded, seconds, ks=ks, extra=extra)


def evaluate_sampling_output(
    method: str,
    prompts: Sequence[str],
    output: Any,
    verify: Callable[[str, str], float],
    ks: Sequence[int] = (1, 4, 8),
    seconds: float | None = None,
) -> MethodResult:
    """A `MethodResult` from a `PowerSamplingOutput` (completions, base_logprobs, prompt_indices, stats).

    Rewards are verify(prompt, completion); cost is stats["tokens_forwarded"] and stats["seconds"] (or
    `seconds`). Other numeric stats (acceptance_rate, mean_ess, ...) go to `extra`.
    """
    idx = list(output.prompt_indices)
    if set(idx) != set(range(len(prompts))):
        raise ValueError("Some prompts have no answer in the output.")
    stats = dict(getattr(output, "stats", {}) or {})
    extra = {k: float(v) for k, v in stats.items() if isinstance(v, int | float | np.floating)}
    return evaluate_answers(
        method,
        idx,
        [verify(prompts[i], c) for i, c in zip(idx, output.completions)],
        list(output.base_logprobs),
        tokens_forwarded=float(stats.get("tokens_forwarded", math.nan)),
        seconds=float(seconds if seconds is not None else stats.get("seconds", math.nan)),
        ks=ks,
        extra=extra,
    )


def evaluate_power_dataset(
    answers: Any,
    rewards: Sequence[float],
    self_rewards: Sequence[float] | None = None,
    ks: Sequence[int] = (1, 4, 8),
    alpha: float | None = None,
    diagnostic_bootstrap: int = 200,
) -> tuple[MethodResult, dict[str, Any]]:
    """Evaluate a data set of answers written by `generate_power_dataset` (columns prompt_index, base_logprob,
    num_tokens, finished, stats; its metadata names the sampler) with the verifier's `rewards`: (the `MethodResult`,
    the metrics dict of `trl-power eval`). `self_rewards`: log p_base(y|x) when the answers were not sampled from the
    base model (default: their `base_logprob`). With plain samples of the base model (`method: temperature`,
    temperature 1, >= 2 answers per prompt) the metrics include the covariance diagnostic: the predicted effect of
    power sampling at `alpha` (default: the sampler's alpha)."""
    from trl_power.data import power_dataset_metadata
    from trl_power.diagnostic import covariance_diagnostic

    metadata = power_dataset_metadata(answers)
    sampling = metadata["sampling_config"] if metadata else {"method": "given", "alpha": alpha}
    index, stats = list(answers["prompt_index"]), list(answers["stats"])
    self_rewards = list(answers["base_logprob"]) if self_rewards is None else list(self_rewards)
    alpha = alpha if alpha is not None else sampling.get("alpha")
    extra = {
        "alpha": sampling.get("alpha"),
        "new_tokens_per_answer": sum(answers["num_tokens"]) / len(answers),
        "truncated_fraction": sum(not f for f in answers["finished"]) / len(answers),
    }
    for key in ("acceptance_rate", "mean_ess"):
        values = [s[key] for s in stats if s.get(key) is not None and not math.isnan(s[key])]
        if values:
            extra[key] = sum(values) / len(values)
    result = evaluate_answers(
        sampling["method"],
        index,
        rewards,
        self_rewards,
        tokens_forwarded=sum(s["tokens_forwarded"] for s in stats),
        seconds=sum(s["seconds"] for s in stats),
        ks=[k for k in ks if k >= 1],
        extra=extra,
    )
    metrics = {**result.to_dict(), "sampling_config": sampling, "diagnostic": None}
    num_prompts = max(index) + 1
    grouped = [g for g in group_by_prompt(rewards, index, num_prompts) if g]
    plain = sampling["method"] in ("plain", "temperature") and sampling.get("temperature") == 1.0
    if plain and alpha is not None and alpha > 1 and min(len(g) for g in grouped) >= 2:
        base_lp = [g for g in group_by_prompt(list(answers["base_logprob"]), index, num_prompts) if g]
        diagnostic = covariance_diagnostic(grouped, base_lp, alpha=alpha, bootstrap=diagnostic_bootstrap)
        metrics["diagnostic"] = diagnostic.to_dict()
    return result, metrics


# ----- compute-matched baselines and paired comparisons -------------------------------------------


def _sets_of(group: np.ndarray, n: int) -> list[np.ndarray]:
    if n < 1 or group.size < n:
        raise ValueError(f"every prompt needs at least n={n} answers, one has {group.size}")
    return [group[k : k + n] for k in range(0, group.size - n + 1, n)]


def best_of_n(rewards: ArrayLike, self_rewards: ArrayLike, n: int) -> list[list[float]]:
    """Best-of-n by self-reward: each prompt's answers, in order, are cut into disjoint sets of n (a remainder is
    dropped); from each set the answer of highest log p_base(y|x) is kept (the first on ties). Returns the kept
    answers' rewards per prompt. With plain samples it costs n of them per kept answer: the compute-matched
    baseline of a power sampler that forwards ~n answers' tokens per answer (it targets argmax_y p(y|x), the
    alpha -> inf limit, not p_alpha)."""
    r, lp = as_groups(rewards), as_groups(self_rewards)
    if [g.size for g in r] != [g.size for g in lp]:
        raise ValueError("rewards and self_rewards must have the same shape per prompt")
    out = []
    for rg, lg in zip(r, lp):
        out.append([float(rs[int(np.argmax(ls))]) for rs, ls in zip(_sets_of(rg, n), _sets_of(lg, n))])
    return out


def majority_vote(answers: Sequence[Sequence[Any]], rewards: ArrayLike, n: int) -> list[list[float]]:
    """Majority vote@n: each prompt's answers (extracted final answers, `None` for malformed ones, which do not
    vote) are cut into disjoint sets of n; each set's most frequent answer wins (ties: the one seen first) and
    scores the reward of an answer equal to it; a set without any valid answer scores 0. Returns the winners'
    rewards per prompt."""
    r = as_groups(rewards)
    if [len(a) for a in answers] != [g.size for g in r]:
        raise ValueError("answers and rewards must have the same shape per prompt")
    out = []
    for ans, rg in zip(answers, r):
        scores = []
        for start in range(0, len(ans) - n + 1, n):
            votes: dict[Any, int] = {}
            first: dict[Any, int] = {}
            for k in range(start, start + n):
                a = ans[k]
                if a is not None:
                    votes[a] = votes.get(a, 0) + 1
                    first.setdefault(a, k)
            if not votes:
                scores.append(0.0)
                continue
            winner = max(votes, key=lambda a: (votes[a], -first[a]))
            scores.append(float(rg[first[winner]]))
        if not scores:
            raise ValueError(f"every prompt needs at least n={n} answers, one has {len(ans)}")
        out.append(scores)
    return out


@dataclass
class PairedComparison:
    """Method A against method B on the same prompts (`paired_test`).

    Attributes:
        mean_difference: (1/P) sum_i (mean_j a_ij - mean_j b_ij), A's accuracy minus B's.
        stderr: sd_i(d_i) / sqrt(P).
        ci: the `confidence` t-interval mean_difference -/+ t_{P-1} stderr.
        p_value: two-sided sign-flip permutation p-value of H0 "A and B are exchangeable on every prompt"
            (exact over all 2^P sign patterns when P <= 16, else `resamples` random ones, counting the observed).
        num_prompts: P.
    """

    mean_difference: float
    stderr: float
    ci: tuple[float, float]
    p_value: float
    num_prompts: int
    confidence: float = 0.95

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def paired_test(
    rewards_a: ArrayLike,
    rewards_b: ArrayLike,
    confidence: float = 0.95,
    resamples: int = 20_000,
    seed: int = 0,
) -> PairedComparison:
    """Paired comparison of two methods on the same prompts: per-prompt differences d_i = mean_j a_ij - mean_j b_ij
    (any numbers of answers per prompt), their mean, a t-interval and a sign-flip permutation p-value for
    |mean d| (under H0 each d_i is symmetric about 0). Pairing removes the prompt-to-prompt spread that an
    unpaired comparison of two accuracies carries."""
    from scipy import stats as st

    a, b = as_groups(rewards_a), as_groups(rewards_b)
    if len(a) != len(b):
        raise ValueError(f"{len(a)} prompts for A but {len(b)} for B")
    if len(a) < 2:
        raise ValueError("a paired test needs at least 2 prompts")
    d = np.array([x.mean() - y.mean() for x, y in zip(a, b)])
    P = d.size
    mean = float(d.mean())
    se = float(d.std(ddof=1) / math.sqrt(P))
    half = float(st.t.ppf(0.5 + confidence / 2, P - 1)) * se
    observed = abs(d.sum())
    if P <= 16:
        signs = 1 - 2 * ((np.arange(2**P)[:, None] >> np.arange(P)) & 1)
        p_value = float((np.abs(signs @ d) >= observed - 1e-12).mean())
    else:
        signs = np.random.default_rng(seed).choice([-1.0, 1.0], size=(resamples, P))
        p_value = float(((np.abs(signs @ d) >= observed - 1e-12).sum() + 1) / (resamples + 1))
    return PairedComparison(mean, se, (mean - half, mean + half), p_value, P, confidence)


def format_results(results: Sequence[MethodResult]) -> str:
    """A Markdown table of method results."""
    ks = sorted({k for r in results for k in r.pass_at_k})
    head = ["method", "accuracy", *[f"pass@{k}" for k in ks], "self-reward", "tokens/answer", "s/answer"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in results:
        cells = [r.method, f"{r.accuracy:.3f} ± {r.accuracy_stderr:.3f}"]
        cells += [f"{r.pass_at_k[k]:.3f}" if k in r.pass_at_k else "-" for k in ks]
        cells += [f"{r.mean_self_reward:.2f}", f"{r.tokens_per_answer:.1f}", f"{r.seconds_per_answer:.4f}"]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def __getattr__(name: str) -> Any:
    """`covariance_diagnostic` and `CovarianceDiagnostic` live in `trl_power.diagnostic`."""
    if name in ("covariance_diagnostic", "CovarianceDiagnostic"):
        from trl_power import diagnostic

        return getattr(diagnostic, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
