"""PowerSelfRewardTrainer (issue 3): KL-regularised RL with r = log p_ref, whose exact optimum is p_ref^alpha.

Every model here is a tiny Llama (vocab 5 = EOS + 4 words, hidden 32, 2 layers) fitted offline; completions are at
most 3 tokens, so all 85 completions can be enumerated and distributions compared exactly (trl_power.theory).
Llama rather than Qwen2 because `AutoTokenizer` reloads a word-level tokenizer saved next to a Qwen2 config as a
`Qwen2Tokenizer` that adds an out-of-vocabulary `<|endoftext|>` pad token; next to a Llama config it reloads as
saved. The prompt "d" is a single token that never appears first in the completions: a transformer without
absolute positions cannot tell the prefixes "a", "a a", "a a a" apart, which would tie the conditionals the
target needs to set independently.
"""

from __future__ import annotations

import copy
import json
import math
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from datasets import Dataset
from launch import accelerate_launch
from transformers import AutoModelForCausalLM

from trl_power import PowerSelfRewardConfig, PowerSelfRewardTrainer
from trl_power.scoring import sequence_logprobs
from trl_power.theory import (
    exact_sequence_logprobs,
    finished_completions,
    power_from_logprobs,
    total_variation,
)
from trl_power.tiny_models import all_completions, build_model, build_tokenizer, fit_to_distribution
from trl_power.trainers.self_reward_trainer import grouped_covariance
from trl_power.trainers.utils import CPU_RUN

WORDS = ["a", "b", "c", "d"]
PROMPT = "d"
PROMPT_IDS = [4]
MAX_NEW_TOKENS = 3
EOS = 0
REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    # Tiny models on 2 shared cores: intra-op threading only adds contention (10x slower measured here).
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def reference_target() -> dict[tuple[int, ...], float]:
    """Three strong completions of close probability (0.20, 0.16, 0.14) under a heavy first token (1, 40% of the
    mass spread over its 16 full-length continuations) and 10% spread over all 85 completions. Unlike the
    trap target, p^2 and p^4 both keep several completions, so they differ from each other and from p."""
    comps = all_completions(5, EOS, MAX_NEW_TOKENS)
    target = {c: 0.10 / len(comps) for c in comps}
    heavy = [c for c in comps if c[0] == 1 and len(c) == MAX_NEW_TOKENS and EOS not in c]
    for c in heavy:
        target[c] += 0.40 / len(heavy)
    for c, p in (((2, 3, EOS), 0.20), ((3, EOS), 0.16), ((2, 4, EOS), 0.14)):
        target[c] += p
    return target


def save_reference(path: Path) -> Path:
    """The reference model (fitted to `reference_target`) and its tokenizer, saved to `path`."""
    tokenizer = build_tokenizer(WORDS, with_pad=False)
    model = build_model(vocab_size=len(tokenizer), seed=0, arch="llama")
    fit_to_distribution(model, PROMPT_IDS, reference_target(), steps=100)
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def reference_dir(tmp_path_factory) -> Path:
    return save_reference(tmp_path_factory.mktemp("tiny-llama"))


def load_reference(path: Path) -> torch.nn.Module:
    return AutoModelForCausalLM.from_pretrained(path).eval()


def config_kwargs(tmp_path: Path, **overrides) -> dict:
    kwargs = dict(
        output_dir=str(tmp_path / "out"),
        per_device_train_batch_size=8,
        num_generations=8,
        max_completion_length=MAX_NEW_TOKENS,
        learning_rate=1e-2,
        max_steps=2,
        logging_steps=1,
        **CPU_RUN,
        seed=0,
    )
    kwargs.update(overrides)
    return kwargs


def make_config(tmp_path: Path, **overrides) -> PowerSelfRewardConfig:
    return PowerSelfRewardConfig(**config_kwargs(tmp_path, **overrides))


def prompts(n: int = 256) -> Dataset:
    return Dataset.from_dict({"prompt": [PROMPT] * n})


def exact_distribution(
    model: torch.nn.Module, alpha: float = 1.0, finished_only: bool = False
) -> dict[tuple[int, ...], float]:
    """p^alpha over every completion (the power of p truncated at 3 tokens), or over the finished ones."""
    logprobs, _ = exact_sequence_logprobs(model, None, PROMPT_IDS, MAX_NEW_TOKENS)
    if finished_only:
        logprobs = finished_completions(logprobs, [EOS])
    return power_from_logprobs(logprobs, alpha)


# ----- configuration -------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("given", "alpha", "beta"),
    [
        ({}, 4.0, 1 / 3),
        ({"alpha": 2.0}, 2.0, 1.0),
        ({"beta": 0.5}, 3.0, 0.5),
        ({"alpha": 4.0, "beta": 1 / 3}, 4.0, 1 / 3),
    ],
)
def test_alpha_sets_beta(tmp_path, given, alpha, beta):
    config = PowerSelfRewardConfig(output_dir=str(tmp_path), report_to="none", **given)
    assert config.alpha == pytest.approx(alpha)
    assert config.beta == pytest.approx(beta)
    assert config.implied_alpha == pytest.approx(alpha)


@pytest.mark.parametrize(
    ("given", "match"),
    [
        ({"alpha": 1.0}, "alpha must be"),
        ({"alpha": 0.5}, "alpha must be"),
        ({"alpha": float("inf")}, "alpha must be"),
        ({"beta": 0.0}, "beta must be"),
        ({"beta": -1.0}, "beta must be"),
        ({"alpha": 4.0, "beta": 0.5}, "inconsistent"),
        ({"self_reward_weight": -1.0}, "self_reward_weight"),
    ],
)
def test_bad_alpha_beta_raise_at_construction(tmp_path, given, match):
    with pytest.raises(ValueError, match=match):
        PowerSelfRewardConfig(output_dir=str(tmp_path), report_to="none", **given)


def test_config_from_the_command_line(tmp_path):
    from trl import TrlParser

    (config,) = TrlParser((PowerSelfRewardConfig,)).parse_args_into_dataclasses(
        [
            "--output_dir",
            str(tmp_path),
            "--beta",
            "0.25",
            "--self_reward_weight",
            "0.5",
            "--report_to",
            "none",
        ]
    )
    assert config.alpha == pytest.approx(5.0)
    assert config.implied_alpha == pytest.approx(3.0)  # 1 + w / beta


def test_defaults_keep_the_optimum(tmp_path):
    config = PowerSelfRewardConfig(output_dir=str(tmp_path), report_to="none")
    assert config.optimum_warnings() == []
    # the estimator settings the optimum depends on
    assert not config.normalize_advantages and config.reward_clip_range is None
    assert config.num_iterations == 1 and config.steps_per_generation == config.gradient_accumulation_steps
    assert config.disable_dropout and config.temperature == 1.0


@pytest.mark.parametrize(
    ("setting", "match"),
    [
        ({"normalize_advantages": True}, "normalize_advantages"),
        ({"num_iterations": 2}, "clipping"),
        ({"steps_per_generation": 2}, "clipping"),
        ({"temperature": 0.7}, "temperature"),
        ({"top_p": 0.9}, "top_p"),
        ({"top_k": 20}, "top_k"),
        ({"generation_kwargs": {"min_p": 0.1}}, "min_p"),
        ({"vllm_structured_outputs_regex": "[ab]+"}, "vllm_structured_outputs_regex"),
        ({"mask_truncated_completions": True}, "mask_truncated_completions"),
        ({"sync_ref_model": True}, "sync_ref_model"),
        ({"disable_dropout": False}, "dropout"),
    ],
)
def test_settings_that_move_the_optimum_warn(tmp_path, setting, match):
    with pytest.warns(UserWarning, match=match):
        PowerSelfRewardConfig(output_dir=str(tmp_path), report_to="none", **setting)


def test_trainer_needs_a_power_config(tmp_path, reference_dir):
    from trl import RLOOConfig

    with pytest.raises(TypeError, match="PowerSelfRewardConfig"):
        PowerSelfRewardTrainer(
            model=str(reference_dir),
            args=RLOOConfig(output_dir=str(tmp_path), report_to="none", bf16=False),
            train_dataset=prompts(),
        )


# ----- the self-reward: log p_ref from the reference pass ----------------------------------------------------------


def test_self_reward_is_reference_sequence_logprob_and_metrics(tmp_path, reference_dir):
    """The self-reward of every completion equals sum_t log p_ref(y_t | x, y_<t) over its tokens, EOS included and
    padding excluded, computed independently; the logged metrics are what they claim to be."""
    seen: list[list[int]] = []

    def length(completion_ids, **kwargs):
        seen.clear()
        seen.extend(list(c) for c in completion_ids)
        return [float(len(c)) for c in completion_ids]

    config = make_config(tmp_path, alpha=4.0, reward_weights=[0.5], max_steps=1, num_generations=16,
                         per_device_train_batch_size=16)  # fmt: skip
    trainer = PowerSelfRewardTrainer(
        model=str(reference_dir),
        reward_funcs=length,
        args=config,
        train_dataset=prompts(),
        processing_class=build_tokenizer(WORDS, with_pad=False),
    )
    trainer.train()

    lengths = [len(c) for c in seen]
    assert len(set(lengths)) > 1, "the batch should mix completion lengths, so padding is exercised"
    assert any(c[-1] == EOS for c in seen) and any(c[-1] != EOS for c in seen)
    expected = (
        sequence_logprobs(load_reference(reference_dir), [PROMPT_IDS] * len(seen), seen).double().numpy()
    )
    got = np.array(trainer._logs["extra"]["self_reward"], dtype=np.float64)
    np.testing.assert_allclose(got, expected, atol=1e-4)
    assert list(trainer._logs["rewards"]) == ["length"]  # the user's reward functions only

    logs = trainer.state.log_history[0]
    length_arr = np.array(lengths, dtype=np.float64)
    assert logs["self_reward/mean"] == pytest.approx(expected.mean(), abs=1e-4)
    assert logs["self_reward/std"] == pytest.approx(expected.std(ddof=1), abs=1e-4)
    assert logs["rewards/length/mean"] == pytest.approx(length_arr.mean(), abs=1e-6)
    # RLOO's meanings: `reward` is the user's weighted reward, `kl` the per-token mean of log pi - log p_ref
    assert logs["reward"] == pytest.approx(0.5 * length_arr.mean(), abs=1e-5)
    assert logs["kl"] == pytest.approx(0.0, abs=1e-5)
    assert logs["total_reward/mean"] == pytest.approx(expected.mean() + 0.5 * length_arr.mean(), abs=1e-4)
    assert logs["rewards/length/cov_self_reward"] == pytest.approx(
        np.cov(length_arr, expected)[0, 1], abs=1e-4
    )
    assert logs["alpha"] == pytest.approx(4.0)
    # before the first update the policy is the reference, so the sequence KL is 0 and the objective is the reward
    assert logs["sequence_kl"] == pytest.approx(0.0, abs=1e-5)
    assert logs["objective"] == pytest.approx(expected.mean() + 0.5 * length_arr.mean(), abs=1e-4)


def test_self_reward_weight_zero_is_plain_kl_regularised_rl(tmp_path, reference_dir):
    """With self_reward_weight=0 the total reward is the true reward alone (the self-reward is still logged)."""

    def length(completion_ids, **kwargs):
        return [float(len(c)) for c in completion_ids]

    trainer = PowerSelfRewardTrainer(
        model=str(reference_dir),
        reward_funcs=length,
        args=make_config(tmp_path, self_reward_weight=0.0, max_steps=1),
        train_dataset=prompts(),
        processing_class=build_tokenizer(WORDS, with_pad=False),
    )
    trainer.train()
    logs = trainer.state.log_history[0]
    assert logs["alpha"] == 1.0
    assert logs["reward"] == pytest.approx(logs["rewards/length/mean"], abs=1e-6)  # RLOO's total reward
    assert logs["objective"] == pytest.approx(logs["rewards/length/mean"], abs=1e-5)  # KL is 0 at step 1
    assert logs["self_reward/mean"] < 0


def test_grouped_covariance_ignores_nan_and_averages_groups():
    x = torch.tensor([1.0, 2.0, 3.0, float("nan"), 0.0, 1.0, 0.0, 1.0])
    y = torch.tensor([2.0, 4.0, 7.0, 1.0, 1.0, 0.0, 1.0, 0.0])
    first = np.cov([1.0, 2.0, 3.0], [2.0, 4.0, 7.0])[0, 1]
    second = np.cov([0.0, 1.0, 0.0, 1.0], [1.0, 0.0, 1.0, 0.0])[0, 1]
    assert grouped_covariance(x, y, 4) == pytest.approx((first + second) / 2)
    assert math.isnan(grouped_covariance(torch.full((4,), float("nan")), y[:4], 4))


def _count_scoring_forwards(trainer) -> dict[str, int]:
    """Count forward calls that score completions (TRL's fused log-prob head), per model."""
    counts = {"policy": 0, "reference": 0}

    def counter(name):
        def hook(module, args, kwargs):
            if kwargs.get("fused_lm_head"):
                counts[name] += 1

        return hook

    trainer.model.register_forward_pre_hook(counter("policy"), with_kwargs=True)
    trainer.ref_model.register_forward_pre_hook(counter("reference"), with_kwargs=True)
    return counts


def test_no_extra_forward_pass(tmp_path, reference_dir):
    """The self-reward costs no forward pass: the forward calls per step are exactly RLOO's with a free reward
    (policy: old log-probs + loss; reference: one pass for the KL), and the reference runs once per step."""
    from trl import RLOOConfig, RLOOTrainer

    steps = 3
    ours = PowerSelfRewardTrainer(
        model=str(reference_dir),
        args=make_config(tmp_path / "ours", max_steps=steps),
        train_dataset=prompts(),
        processing_class=build_tokenizer(WORDS, with_pad=False),
    )
    ours_counts = _count_scoring_forwards(ours)
    ours.train()

    def zero(completions, **kwargs):
        return [0.0] * len(completions)

    plain = RLOOTrainer(
        model=str(reference_dir),
        reward_funcs=zero,
        args=RLOOConfig(
            **config_kwargs(tmp_path / "plain", max_steps=steps), beta=1 / 3, disable_dropout=True
        ),
        train_dataset=prompts(),
        processing_class=build_tokenizer(WORDS, with_pad=False),
    )
    plain_counts = _count_scoring_forwards(plain)
    plain.train()

    assert ours_counts == plain_counts
    assert ours_counts == {"policy": 2 * steps, "reference": steps}


# ----- the optimum: TV(pi_theta, p_ref^alpha) by exact enumeration ---------------------------------------------------


@pytest.mark.parametrize("alpha, finished_only", [(2.0, False), (4.0, False), (2.0, True)])
def test_training_reaches_the_power_distribution(tmp_path, reference_dir, alpha, finished_only):
    """Theorem 2 made concrete: training from p_ref drives pi_theta to p_ref^alpha (truncated at 3 tokens, or over
    finished completions with `finished_only`: cut completions penalised by beta * 20, so the optimum is within
    exp(-20) of it).

    Every distance is exact (all 85 completions enumerated under the policy and the reference): no sampling
    noise in the measurement. The tolerance is derived from what the test must tell apart, not tuned:

        tol = 1/2 * min_q TV(q, p_alpha),   q in {p_ref,  p_ref^alpha' with beta halved or doubled,
                                                  per-token temperature 1/alpha (softmax(alpha * logits))}.

    These are the optima of the plausible wrong estimators: no learning, a KL or reward mis-scaled by 2x
    (e.g. a per-token-mean KL over ~2-3 tokens), and per-token sharpening; with `finished_only` also the other
    target (the truncated one, where the cut completions keep their mass). By the triangle inequality, a trainer
    that converged to within tol of any of them has TV(pi, p_alpha) > tol and fails. tol is at most
    TV(p_ref, p_alpha)/2, and here 9% (alpha 4) to 15% (alpha 2) of it.

    The budget, 120 steps of 32 completions, was set from measurements, not the tolerance: the estimator noise
    shrinks near the optimum (at pi = p_alpha every completion's R = (1+beta) log p_ref - beta log pi equals
    beta log Z, so all leave-one-out advantages are 0), and an exact-gradient twin (same model, optimiser and
    budget, gradient of KL(pi || p_alpha) by enumeration) stops at TV < 0.01, limited by the tiny model; with
    Adam's normalised steps the sampled trainer stops at TV 0.005-0.03 (8 seeds measured).
    """
    reference = load_reference(reference_dir)
    target = exact_distribution(reference, alpha, finished_only)
    beta = 1.0 / (alpha - 1.0)
    sharpened = copy.deepcopy(reference)
    sharpened.get_output_embeddings().weight.data.mul_(alpha)  # lm_head has no bias: logits * alpha
    wrong = {
        "p_ref": exact_distribution(reference),
        "beta/2": exact_distribution(reference, 1 + 2 / beta, finished_only),
        "2*beta": exact_distribution(reference, 1 + 1 / (2 * beta), finished_only),
        "per-token temperature": exact_distribution(sharpened),
    }
    if finished_only:
        wrong["truncated target"] = exact_distribution(reference, alpha, finished_only=False)
    distances = {name: total_variation(q, target) for name, q in wrong.items()}
    tol = 0.5 * min(distances.values())

    config = make_config(tmp_path, alpha=alpha, max_steps=120, num_generations=32, per_device_train_batch_size=32,
                         logging_steps=20, seed=1, finished_only=finished_only)  # fmt: skip
    trainer = PowerSelfRewardTrainer(
        model=str(reference_dir),
        args=config,
        train_dataset=prompts(4096),
        processing_class=build_tokenizer(WORDS, with_pad=False),
    )
    trainer.train()
    tv = total_variation(exact_distribution(trainer.model), target)
    print(f"alpha={alpha}: TV(pi, p_alpha)={tv:.4f}, tol={tol:.4f}, distances to wrong optima={distances}")
    assert tv < tol, f"TV(pi_theta, p_alpha) = {tv:.4f} >= tol = {tol:.4f}; wrong optima at {distances}"
    assert tol <= 0.5 * distances["p_ref"]


# ----- PEFT -----------------------------------------------------------------------------------------------------


def test_lora_trains_only_the_adapter_against_the_disabled_adapter(tmp_path, reference_dir):
    from peft import LoraConfig

    seen: list[list[int]] = []

    def spy(completion_ids, **kwargs):
        seen.clear()
        seen.extend(list(c) for c in completion_ids)
        return [0.0] * len(completion_ids)

    peft_config = LoraConfig(
        r=8, lora_alpha=16, lora_dropout=0.0, target_modules=["q_proj", "v_proj", "o_proj"]
    )
    trainer = PowerSelfRewardTrainer(
        model=str(reference_dir),
        reward_funcs=spy,
        args=make_config(tmp_path, max_steps=4, reward_weights=[0.0], learning_rate=3e-2),
        train_dataset=prompts(),
        processing_class=build_tokenizer(WORDS, with_pad=False),
        peft_config=peft_config,
    )
    base = load_reference(reference_dir)
    base_state = {k: v.clone() for k, v in base.state_dict().items()}
    assert trainer.ref_model is None  # no second copy of the weights
    assert list(trainer.model.peft_config) == ["default"]  # no frozen "ref" adapter either
    trainable = {n for n, p in trainer.model.named_parameters() if p.requires_grad}
    assert trainable and all("lora_" in n for n in trainable)
    lora_before = {n: p.detach().clone() for n, p in trainer.model.named_parameters() if p.requires_grad}

    trainer.train()

    # the base weights did not move, the adapter did
    merged_names = {}
    for name, param in trainer.model.named_parameters():
        if "lora_" in name:
            continue
        key = name.replace("base_model.model.", "").replace(".base_layer", "")
        merged_names[key] = param
    for key, value in base_state.items():
        assert torch.equal(merged_names[key].detach(), value), key
    assert any(
        not torch.equal(p.detach(), lora_before[n])
        for n, p in trainer.model.named_parameters()
        if n in lora_before
    )

    # the last batch was generated by a policy that differs from the base (sequence KL > 0) ...
    assert trainer.state.log_history[-2]["sequence_kl"] != 0.0
    # ... and its self-reward is still log p under the base weights: the reference is the disabled adapter
    expected = sequence_logprobs(base, [PROMPT_IDS] * len(seen), seen).double().numpy()
    np.testing.assert_allclose(np.array(trainer._logs["extra"]["self_reward"]), expected, atol=1e-4)
    with torch.no_grad():
        policy = sequence_logprobs(trainer.model, [PROMPT_IDS] * len(seen), seen).double().numpy()
    assert np.abs(policy - expected).max() > 1e-3


# ----- drop-in use ------------------------------------------------------------------------------------------------


def test_grpo_quickstart_shape(tmp_path, reference_dir, monkeypatch):
    """TRL's GRPO quick start (load a prompt dataset, build the trainer from a model id, train) with
    PowerSelfRewardTrainer swapped in and no reward function; default config, then save."""
    monkeypatch.chdir(tmp_path)
    model_id = str(reference_dir)  # stands for "Qwen/Qwen2-0.5B-Instruct": no Hub here

    # --- the quick start, with the trainer swapped ---
    from trl_power import PowerSelfRewardTrainer

    dataset = Dataset.from_dict({"prompt": ["d", "a c", "b d", "c"] * 2})  # stands for load_dataset(...)

    trainer = PowerSelfRewardTrainer(
        model=model_id,
        train_dataset=dataset,
    )
    trainer.train()
    # --- end of the quick start ---
    trainer.save_model()

    output_dir = tmp_path / f"{reference_dir.name}-PowerSelfReward"
    assert trainer.args.output_dir == output_dir.name
    assert trainer.args.alpha == 4.0
    assert trainer.state.global_step > 0
    assert (output_dir / "model.safetensors").exists()
    assert (output_dir / "tokenizer.json").exists()
    reloaded = AutoModelForCausalLM.from_pretrained(output_dir)
    assert reloaded.config.vocab_size == 5


def test_model_card_and_push_to_hub(tmp_path, reference_dir, monkeypatch):
    import transformers.trainer

    uploads = []

    class FakeApi:
        def create_repo(self, repo_id, **kwargs):
            return SimpleNamespace(repo_id=f"someone/{repo_id}")

        def upload_folder(self, **kwargs):
            uploads.append(kwargs)
            return "https://huggingface.co/someone/commit"

    monkeypatch.setattr(transformers.trainer, "hf_api", lambda: FakeApi())
    trainer = PowerSelfRewardTrainer(
        model=str(reference_dir),
        args=make_config(tmp_path, max_steps=1),
        train_dataset=prompts(),
        processing_class=build_tokenizer(WORDS, with_pad=False),
    )
    trainer.train()
    trainer.push_to_hub()

    assert len(uploads) == 1 and uploads[0]["repo_id"] == "someone/out"
    card = (Path(uploads[0]["folder_path"]) / "README.md").read_text()
    assert "2605.04542" in card
    assert "Power Self-Reward" in card
    for tag in PowerSelfRewardTrainer._tag_names:
        assert tag in card


# ----- two processes ----------------------------------------------------------------------------------------------


@pytest.mark.multiprocess
def test_two_processes_gather_the_groups(tmp_path, reference_dir):
    """`accelerate launch --multi_gpu --num_processes 2` on CPU (two gloo processes): each group of 4 completions
    is split 2 + 2 over the processes; rewards and leave-one-out baselines must be those of the gathered group."""
    out = tmp_path / "mp"
    accelerate_launch(REPO / "tests" / "scripts" / "self_reward_multiprocess.py", reference_dir, out)

    results = [json.loads((out / f"rank{r}.json").read_text()) for r in (0, 1)]
    for result in results:
        assert result["num_processes"] == 2
        assert result["distributed_type"] == "DistributedType.MULTI_CPU" and result["backend"] == "gloo"
        assert result["global_step"] == 3
        assert {
            "sequence_kl",
            "alpha",
            "self_reward/mean",
            "total_reward/mean",
            "rewards/length_reward/cov_self_reward",
        } <= set(result["logged_keys"])
        assert len(result["checks"]) == 3
        for check in result["checks"]:
            assert check["gathered_rows"] == 2 * check["local_rows"] == 4
            assert check["reward_columns"] == 1  # the user's reward function only
            assert check["groups_share_a_prompt"]
            assert check["self_reward_err"] < 1e-4
            assert check["length_err"] == 0.0
            assert check["advantage_err"] < 1e-4
    # the check can tell a gathered baseline from a per-process one
    assert max(c["local_only_diff"] for c in results[0]["checks"]) > 0.1
    assert results[0]["checks"] == results[1]["checks"]


def test_stop_strings_end_completions(tmp_path, reference_dir):
    """stop_strings=["b"]: a completion ends at the first "b" (kept), which RLOO then treats as an end id (finished,
    its self-reward summed up to it). Power: without the stop, a completion is never "b" alone (it would need an end
    after it within 3 tokens but "b" is no EOS), and about a third of the reference's mass starts with "b", so 16
    completions without one would happen with probability < 0.002 under the fixed seed's draws."""
    seen: list[list[int]] = []

    def record(completion_ids, **kwargs):
        seen.extend(list(c) for c in completion_ids)
        return [0.0] * len(completion_ids)

    tokenizer = build_tokenizer(WORDS, with_pad=False)
    b = tokenizer.convert_tokens_to_ids("b")
    config = make_config(
        tmp_path, stop_strings=["b"], max_steps=1, num_generations=16, per_device_train_batch_size=16
    )
    trainer = PowerSelfRewardTrainer(
        model=str(reference_dir),
        reward_funcs=record,
        args=config,
        train_dataset=prompts(),
        processing_class=tokenizer,
    )
    assert b in trainer.eos_token_ids and b in trainer.generation_config.eos_token_id
    trainer.train()
    assert [b] in seen
    assert all(b not in c[:-1] for c in seen)
    expected = (
        sequence_logprobs(load_reference(reference_dir), [PROMPT_IDS] * len(seen), seen).double().numpy()
    )
    np.testing.assert_allclose(
        np.array(trainer._logs["extra"]["self_reward"], dtype=np.float64), expected, atol=1e-4
    )
