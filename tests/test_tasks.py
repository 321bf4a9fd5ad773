"""Synthetic tasks: verifiers, splits, corpus statistics, the shape of the trace distributions, and the
shipped tiny models."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch

from trl_power.scoring import sequence_logprobs
from trl_power.tasks import get_task, list_tasks
from trl_power.tasks.base import VOCABULARY
from trl_power.tasks.models import CHECKPOINTS, load_task_model
from trl_power.tasks.train import TrainConfig, build_task_tokenizer, encode, train_task_model

ALIGNED, MISALIGNED = get_task("aligned"), get_task("misaligned")


def test_registry():
    assert list_tasks() == ["aligned", "misaligned"]
    with pytest.raises(KeyError):
        get_task("nope")


# ----- verifiers -------------------------------------------------------------------------------------


def test_aligned_verifier():
    prompt = "sum 3 5 2 4 :"  # 3 + 5 + 2 + 4 = 14 -> 4
    right = "step 3 + 5 = 8 ; 8 + 2 = 0 ; 0 + 4 = 4 ; answer 4"
    assert ALIGNED.verify(prompt, right) == 1.0
    assert ALIGNED.verify(prompt, right + " <eos>") == 1.0
    assert ALIGNED.verify(prompt, right + " <eos> <pad> <pad>") == 1.0
    assert ALIGNED.verify(prompt, "answer 4") == 1.0  # only the final answer is verified
    assert ALIGNED.verify(prompt, "step 3 + 5 = 8 ; 8 + 2 = 1 ; 1 + 4 = 5 ; answer 5") == 0.0
    assert ALIGNED.extract_answer(right) == 4


@pytest.mark.parametrize(
    "completion",
    [
        "",
        "answer",
        "4",
        "step 3 + 5 = 8 ; 8 + 2 = 0 ; 0 + 4 = 4",  # cut before the answer
        "answer 4 ;",  # trailing words
        "answer 4 4",
        "answer 14",
        "answer four",
        "answer answer",
        "answer <eos> 4",
        "answer 4 <eos> junk",
        "<eos> answer 4",
    ],
)
def test_malformed_completions_score_zero(completion):
    assert ALIGNED.verify("sum 3 5 2 4 :", completion) == 0.0
    assert MISALIGNED.verify("eval 3 * 4 + 5 * 6 :", completion) == 0.0
    assert ALIGNED.extract_answer(completion) is None


def test_misaligned_verifier():
    prompt = "eval 3 * 4 + 2 * 7 :"  # 12 + 14 = 26 -> 6; the shortcut (2 + 2) * 7 = 28 -> 8
    assert MISALIGNED.verify(prompt, "3 * 4 = 2 ; 2 * 7 = 4 ; 2 + 4 = 6 ; answer 6") == 1.0
    assert MISALIGNED.verify(prompt, "3 * 4 = 2 ; 2 + 2 = 4 ; 4 * 7 = 8 ; answer 8") == 0.0
    assert MISALIGNED.verify(prompt, "answer 6") == 1.0


def test_verifier_rejects_foreign_prompts():
    for bad in [
        "",
        "sum 3 5 2 :",
        "sum 3 5 2 4",
        "eval 3 * 4 + 2 :",
        "sum 3 5 2 44 :",
        "eval 3 + 4 + 2 * 7 :",
    ]:
        assert ALIGNED.verify(bad, "answer 4") == 0.0
        assert MISALIGNED.verify(bad, "answer 4") == 0.0
    with pytest.raises(ValueError):
        ALIGNED.parse_prompt("eval 3 * 4 + 2 * 7 :")
    with pytest.raises(ValueError):
        MISALIGNED.parse_prompt("sum 3 5 2 4 :")


@pytest.mark.parametrize("task", [ALIGNED, MISALIGNED], ids=lambda t: t.name)
def test_prompts_round_trip_and_every_word_is_in_the_vocabulary(task):
    for problem in task.split("eval")[:50]:
        prompt = task.format_prompt(problem)
        assert task.parse_prompt(prompt) == problem
        for text in task.trace_distribution(problem):
            assert set((prompt + " " + text).split()) <= set(VOCABULARY)
            assert len(text.split()) + 1 <= task.max_new_tokens  # EOS included


# ----- splits and corpus ------------------------------------------------------------------------------


@pytest.mark.parametrize("task", [ALIGNED, MISALIGNED], ids=lambda t: t.name)
def test_split_is_a_deterministic_partition(task):
    train, held_out = set(task.split("train")), set(task.split("eval"))
    assert not train & held_out and train | held_out == set(task.all_problems())
    assert len(held_out) == round(task.eval_fraction * len(task.all_problems()))
    prompts = task.eval_prompts(40, seed=3)
    assert prompts == task.eval_prompts(40, seed=3) and len(set(prompts)) == 40
    assert {task.parse_prompt(p) for p in prompts} <= held_out
    corpus = task.corpus(300, seed=1)
    assert corpus == task.corpus(300, seed=1)
    assert {task.parse_prompt(e.prompt) for e in corpus} <= train
    with pytest.raises(ValueError):
        task.split("test")


def test_misaligned_problems_all_have_a_wrong_shortcut():
    for a, b, c, d in MISALIGNED.all_problems():
        assert (a * b + c) * d % 10 != (a * b + c * d) % 10


def _binomial_tol(p: float, n: int) -> float:
    """4 standard deviations of a frequency over n Bernoulli(p) draws (plus rounding, for p in {0, 1})."""
    return 4 * math.sqrt(p * (1 - p) / n) + 1e-12


@pytest.mark.parametrize("task", [ALIGNED, MISALIGNED], ids=lambda t: t.name)
def test_trace_distribution_is_normalised_and_the_corpus_follows_it(task):
    """Corpus frequencies of each branch, and of right answers within it, match q within 4 sigmas."""
    problem = task.split("train")[0]
    dist = task.trace_distribution(problem)
    assert sum(p for p, _ in dist.values()) == pytest.approx(1.0, abs=1e-12)
    prompt = task.format_prompt(problem)
    # by symmetry these rates are the same for every problem, so one problem gives the exact values
    kinds: dict[str, list[float]] = {}
    for text, (p, kind) in dist.items():
        mass, right = kinds.setdefault(kind, [0.0, 0.0])
        kinds[kind] = [mass + p, right + p * task.verify(prompt, text)]
    n = 4000
    corpus = task.corpus(n, seed=7)
    for kind, (mass, right) in kinds.items():
        lines = [e for e in corpus if e.kind == kind]
        assert abs(len(lines) / n - mass) < _binomial_tol(mass, n), kind
        rate = right / mass
        assert abs(np.mean([e.correct for e in lines]) - rate) < _binomial_tol(rate, len(lines)), kind
    assert all(e.completion in task.trace_distribution(task.parse_prompt(e.prompt)) for e in corpus[:200])


def test_corpus_branch_rates_are_the_designed_ones():
    stats = {
        name: {
            k: float(np.mean([e.correct for e in get_task(name).corpus(4000, seed=2) if e.kind == k]))
            for k in kinds
        }
        for name, kinds in (("aligned", ("step", "guess")), ("misaligned", ("shortcut", "correct")))
    }
    # step traces: no error in 3 steps w.p. 0.75^3, plus rare cancelling errors; guesses right 1 time in 10
    assert stats["aligned"]["step"] == pytest.approx(0.75**3, abs=0.04)
    assert stats["aligned"]["guess"] == pytest.approx(0.1, abs=0.025)
    assert stats["misaligned"] == {"shortcut": 0.0, "correct": 1.0}


# ----- the shape of the trace distribution (an ideal model p = q) ----------------------------------------


def test_aligned_shape_power_beats_low_temperature_beats_plain():
    for problem in ALIGNED.split("eval")[:5]:
        s = ALIGNED.trace_statistics(problem)
        assert s["top_correct"] and s["power"] > 0.99
        assert s["power"] > s["low_temperature"] > s["plain"] + 0.1
        # the trap: the first word 'guess' is heavier than 'step', though every guess trace is weak
        dist = ALIGNED.trace_distribution(problem)
        guess = [p for p, k in dist.values() if k == "guess"]
        assert sum(guess) > 0.5 and max(guess) < s["top_mass"] / 100


def test_misaligned_shape_power_hurts():
    for problem in MISALIGNED.split("eval")[:20]:
        s = MISALIGNED.trace_statistics(problem)
        assert s["plain"] == pytest.approx(0.7) and s["num_completions"] == 17 and not s["top_correct"]
        assert s["power"] < 0.02 and s["low_temperature"] < s["plain"]


@pytest.mark.parametrize("task", [ALIGNED, MISALIGNED], ids=lambda t: t.name)
def test_exact_covariance_of_reward_and_log_q_has_the_designed_sign(task):
    problem = task.split("eval")[0]
    prompt = task.format_prompt(problem)
    dist = task.trace_distribution(problem)
    p = np.array([v[0] for v in dist.values()])
    r = np.array([task.verify(prompt, t) for t in dist])
    lp = np.log(p)
    cov = p @ ((r - p @ r) * (lp - p @ lp))
    assert cov > 0.1 if task.name == "aligned" else cov < -0.1


# ----- training and the shipped checkpoints -------------------------------------------------------------


def test_training_is_deterministic_from_the_seed():
    config = TrainConfig(num_examples=64, steps=3, batch_size=16, eval_examples=8, hidden_size=16)
    m1, tok, stats = train_task_model("misaligned", config, log_every=0)
    m2, _, _ = train_task_model("misaligned", config, log_every=0)
    for (k, a), (_, b) in zip(m1.state_dict().items(), m2.state_dict().items()):
        assert torch.equal(a, b), k
    assert stats["num_parameters"] == sum(p.numel() for p in m1.parameters())
    ids, labels = encode(tok, get_task("misaligned").corpus(2))
    assert ids.shape == labels.shape and (labels[:, :9] == -100).all()  # the 9 prompt words are not scored


@pytest.mark.parametrize("name", ["aligned", "misaligned"])
def test_shipped_checkpoint_loads_and_is_small(name):
    path = CHECKPOINTS / name
    assert (path / "model.safetensors").exists(), "run `python -m trl_power.tasks.train` to rebuild"
    assert sum(f.stat().st_size for f in Path(path).iterdir()) < 10 * 2**20
    model, tok = load_task_model(name, train_if_missing=False)
    assert tok.get_vocab() == build_task_tokenizer().get_vocab()
    prompt = get_task(name).eval_prompts(1)[0]
    ids = tok(prompt, add_special_tokens=False)["input_ids"]
    assert tok.decode(ids) == prompt and tok.eos_token_id == 0
    assert model.config.eos_token_id == 0


@pytest.mark.parametrize("name", ["aligned", "misaligned"])
def test_shipped_model_learned_the_shape(name):
    """On a held-out prompt, scoring q's whole support: the model keeps its mass on well-formed traces, its
    likeliest completion is q's (the strong right trace / the wrong shortcut) by a clear margin, and
    KL(q || p) is small. These are coarse checks of a 85k-parameter model (training reports a held-out KL of
    0.02 nats for aligned, 0.10 for misaligned, on average over prompts; per prompt it varies)."""
    task = get_task(name)
    model, tok = load_task_model(name, train_if_missing=False)
    problem = task.split("eval")[1]
    prompt = task.format_prompt(problem)
    dist = task.trace_distribution(problem)
    texts = list(dist)
    q = np.array([dist[t][0] for t in texts])
    pid = tok(prompt, add_special_tokens=False)["input_ids"]
    comps = [tok(t, add_special_tokens=False)["input_ids"] + [tok.eos_token_id] for t in texts]
    lp = sequence_logprobs(model, [pid] * len(comps), comps, batch_size=512).double().numpy()
    assert np.exp(lp).sum() > 0.9
    first, second = np.sort(lp)[::-1][:2]
    assert int(np.argmax(lp)) == int(np.argmax(q)) and first - second > math.log(2)
    assert float(q @ (np.log(q) - lp)) < 0.5


def test_report_measures_with_the_power_sampler_and_predicts_the_gain():
    """`python -m trl_power.tasks.report` draws with `PowerSampler` and evaluates like every sampler: on `aligned`
    (20 prompts x 8 answers) plain and low-temperature rows over 160 answers, and the diagnostic predicts a gain
    (the measured gain with 100 x 32 is +0.74, docs/tasks.md: far beyond the noise of 20 prompts)."""
    from trl_power.tasks.report import measure

    out = measure("aligned", num_prompts=20, num_samples=8, bootstrap=50)
    assert [r.method for r in out["results"]] == ["plain", "low_temperature"]
    assert all(r.num_answers == 160 and r.num_prompts == 20 for r in out["results"])
    assert out["diagnostic"].verdict == "help" and out["diagnostic"].predicted_gain > 0.4


def test_few_shot_arithmetic_task():
    """The real-model task: held-out and training problems disjoint, 155 in all; every prompt's shots are solved
    training problems other than the question; the verifier reads the first line; the shipped prompt files
    (recipes/data/arithmetic_{train,eval}.jsonl) are the task's prompts."""
    import json
    from pathlib import Path

    from trl_power.tasks.arithmetic import FewShotArithmetic

    task = FewShotArithmetic()
    train, held_out = task.split("train"), task.split("eval")
    assert len(held_out) == 64 and len(train) == 91 and not set(train) & set(held_out)
    for problem in train + held_out:
        lines = task.format_prompt(problem).split("\n")
        assert lines[-1] == task.line(problem) and len(lines) == task.shots + 1
        for shot in lines[:-1]:
            a, op, b = int(shot[0]), shot[1], int(shot[2])
            assert (a, op, b) in train and (a, op, b) != problem and shot[4:] == str(task.solve((a, op, b)))
    prompt = task.format_prompt((7, "+", 8))
    assert task.verify(prompt, "15\n") == 1.0 and task.verify(prompt, " 15") == 1.0
    assert task.verify(prompt, "14\n15") == 0.0 and task.verify(prompt, "fifteen") == 0.0
    assert task.verify("no question", "15") == 0.0
    root = Path(__file__).resolve().parents[1]
    for part in ("train", "eval"):
        lines = (root / f"recipes/data/arithmetic_{part}.jsonl").read_text().splitlines()
        assert [json.loads(line)["prompt"] for line in lines] == task.prompts(part)
