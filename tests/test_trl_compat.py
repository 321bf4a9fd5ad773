"""Drop-in for real: TRL's own RLOOTrainer and SFTTrainer test cases, restated with our classes swapped in.

Each test below restates a test of TRL's `tests/test_rloo_trainer.py` or `tests/test_sft_trainer.py` (TRL main of
2026-07; the test names are TRL's) with `RLOOTrainer`/`RLOOConfig` replaced by `PowerSelfRewardTrainer`/
`PowerSelfRewardConfig` and `SFTTrainer`/`SFTConfig` by `PowerDistillTrainer`/`PowerDistillConfig`, and everything
else as TRL wrote it: the same arguments, the same assertions. What is not TRL's is the harness: no Hub here, so the
models are tiny Llama stand-ins built offline (a causal LM and two sequence-classification reward models, each saved
with a word-level tokenizer that has a chat template) and `zen` is a local data set of the same formats. Llama rather
than the Qwen2 the tests name: `AutoTokenizer` reloads a word-level tokenizer saved next to a Qwen2 config as a
`Qwen2Tokenizer`, which mangles it (tiny_models.py). A TRL upgrade that breaks the drop-in fails here.

The one intended difference, kept and tested: `beta=0` is refused (no power optimum without the KL term); the error
says what to use instead (docs/self_reward.md lists it).
"""

from __future__ import annotations

import logging
import math

import pytest
import torch
from datasets import Dataset, DatasetDict
from transformers import AutoModelForCausalLM, LlamaConfig, LlamaForSequenceClassification, TrainingArguments

from trl_power import PowerDistillConfig, PowerDistillTrainer, PowerSelfRewardConfig, PowerSelfRewardTrainer
from trl_power.tiny_models import build_model, build_tokenizer

WORDS = (
    "the sky is blue water wet fire hot grass green snow cold sun bright user assistant ### Chosen: Rejected:"
)
CHAT_TEMPLATE = (
    "{% for m in messages %}{{ m['role'] }} {{ m['content'] }} {% endfor %}"
    "{% if add_generation_prompt %}assistant {% endif %}"
)
FACTS = [
    "the sky is blue",
    "water is wet",
    "fire is hot",
    "grass is green",
    "snow is cold",
    "the sun is bright",
]


def tokenizer():
    tok = build_tokenizer(WORDS.split())
    tok.chat_template = CHAT_TEMPLATE
    return tok


@pytest.fixture(scope="module")
def hub(tmp_path_factory):
    """Local stand-ins for the Hub ids the TRL tests use."""
    root = tmp_path_factory.mktemp("hub")
    tok = tokenizer()
    paths = {}
    lm = build_model(len(tok), seed=0, arch="llama", hidden_size=16, num_heads=2, initializer_range=0.2)
    paths["causal_lm"] = root / "tiny-CausalLM"
    lm.save_pretrained(paths["causal_lm"])
    tok.save_pretrained(paths["causal_lm"])
    for k, name in enumerate(("tiny-SequenceClassification", "tiny-SequenceClassification-2")):
        torch.manual_seed(k)
        config = LlamaConfig(
            vocab_size=len(tok), hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2,
            num_key_value_heads=2, num_labels=1, pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id,
        )  # fmt: skip
        paths[name] = root / name
        LlamaForSequenceClassification(config).save_pretrained(paths[name])
        tok.save_pretrained(paths[name])
    return {k: str(v) for k, v in paths.items()}


def zen(config_name: str) -> DatasetDict:
    """The formats of trl-internal-testing/zen used below, with the stand-in vocabulary."""
    if config_name == "standard_prompt_only":
        rows = {"prompt": [f.rsplit(" ", 1)[0] for f in FACTS]}
    elif config_name == "conversational_prompt_only":
        rows = {"prompt": [[{"role": "user", "content": f.rsplit(" ", 1)[0]}] for f in FACTS]}
    elif config_name == "standard_language_modeling":
        rows = {"text": FACTS}
    elif config_name == "conversational_language_modeling":
        rows = {
            "messages": [
                [
                    {"role": "user", "content": f.rsplit(" ", 1)[0]},
                    {"role": "assistant", "content": f.split()[-1]},
                ]
                for f in FACTS
            ]
        }
    elif config_name == "standard_implicit_prompt_preference":
        rows = {"chosen": FACTS, "rejected": FACTS[1:] + FACTS[:1]}
    else:
        raise KeyError(config_name)
    train = Dataset.from_dict(rows)
    return DatasetDict({"train": train, "test": train.select(range(3))})


def assert_params_changed(previous: dict, model) -> None:
    for n, param in previous.items():
        assert not torch.equal(param, model.get_parameter(n)), f"Parameter {n} has not changed."


# ----- RLOO -----------------------------------------------------------------------------------------------------------


def rloo_args(tmp_path, **kwargs) -> PowerSelfRewardConfig:
    defaults = dict(
        output_dir=str(tmp_path),
        learning_rate=0.1,
        per_device_train_batch_size=3,
        num_generations=3,
        max_completion_length=8,
        report_to="none",
    )
    return PowerSelfRewardConfig(**{**defaults, **kwargs})


def test_init_minimal(hub, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # args=None: the default output_dir is made in the working directory
    trainer = PowerSelfRewardTrainer(
        model=hub["causal_lm"],
        reward_funcs=hub["tiny-SequenceClassification"],
        train_dataset=zen("standard_prompt_only")["train"],
    )
    # not TRL's (its test asserts nothing): what the trainer built from ids alone
    assert isinstance(trainer.args, PowerSelfRewardConfig)
    assert trainer.args.output_dir == "tiny-CausalLM-PowerSelfReward"
    assert (trainer.args.alpha, trainer.args.beta) == (4.0, pytest.approx(1 / 3))
    assert type(trainer.model).__name__ == "LlamaForCausalLM"
    assert trainer.model.config._name_or_path == hub["causal_lm"]
    assert [type(f).__name__ for f in trainer.reward_funcs] == ["LlamaForSequenceClassification"]
    assert trainer.num_true_rewards == 1


@pytest.mark.parametrize("config_name", ["standard_prompt_only", "conversational_prompt_only"])
def test_train_dataset_format(hub, tmp_path, config_name):
    trainer = PowerSelfRewardTrainer(
        model=hub["causal_lm"],
        reward_funcs=hub["tiny-SequenceClassification"],
        args=rloo_args(tmp_path),
        train_dataset=zen(config_name)["train"],
    )
    previous = {n: p.clone() for n, p in trainer.model.named_parameters()}
    trainer.train()
    assert trainer.state.log_history[-1]["train_loss"] is not None
    assert_params_changed(previous, trainer.model)


def test_train_with_eval(hub, tmp_path):
    dataset = zen("standard_prompt_only")
    trainer = PowerSelfRewardTrainer(
        model=hub["causal_lm"],
        reward_funcs=hub["tiny-SequenceClassification"],
        args=rloo_args(tmp_path, per_device_eval_batch_size=3, eval_strategy="steps", eval_steps=2),
        train_dataset=dataset["train"],
        eval_dataset=dataset["test"],
    )
    trainer.train()
    # not TRL's (its test asserts nothing): the evaluation ran every 2 steps and logged its loss
    evaluations = [h for h in trainer.state.log_history if "eval_loss" in h]
    assert [h["step"] for h in evaluations] == list(range(2, trainer.state.global_step + 1, 2))
    assert len(evaluations) >= 2
    assert all(math.isfinite(h["eval_loss"]) for h in evaluations)


def test_train_peft_config(hub, tmp_path):
    from peft import LoraConfig

    model = AutoModelForCausalLM.from_pretrained(hub["causal_lm"], dtype="float32")
    base_param_names = [f"base_model.model.{n}" for n, _ in model.named_parameters()]
    trainer = PowerSelfRewardTrainer(
        model=model,
        reward_funcs=hub["tiny-SequenceClassification"],
        args=rloo_args(tmp_path),
        train_dataset=zen("standard_prompt_only")["train"],
        peft_config=LoraConfig(),
    )
    previous = {n: p.clone() for n, p in trainer.model.named_parameters()}
    trainer.train()
    assert trainer.state.log_history[-1]["train_loss"] is not None
    for n, param in previous.items():
        new_param = trainer.model.get_parameter(n)
        if n in base_param_names:
            torch.testing.assert_close(param, new_param, msg=f"Parameter {n} has changed.")
        elif "base_layer" not in n:
            assert not torch.equal(param, new_param), f"Parameter {n} has not changed."


def test_reward_metric_reflects_reward_weights(hub, tmp_path):
    """The logged 'reward' is the user's weighted reward, as in RLOO (the self-reward has its own metric)."""

    def constant_reward_1(completions, **kwargs):
        return [1.0] * len(completions)

    def constant_reward_0(completions, **kwargs):
        return [0.0] * len(completions)

    trainer = PowerSelfRewardTrainer(
        model=hub["causal_lm"],
        reward_funcs=[constant_reward_1, constant_reward_0],
        args=rloo_args(tmp_path, reward_weights=[0.7, 0.3]),
        train_dataset=zen("standard_prompt_only")["train"],
    )
    trainer.train()
    log = trainer.state.log_history[-1]
    assert abs(log["reward"] - 0.7) < 1e-5, log["reward"]
    assert log["self_reward/mean"] < 0 and "total_reward/mean" in log


def test_train_with_clipped_rewards(hub, tmp_path):
    trainer = PowerSelfRewardTrainer(
        model=hub["causal_lm"],
        reward_funcs=hub["tiny-SequenceClassification"],
        args=rloo_args(tmp_path, reward_clip_range=(-1, 1)),
        train_dataset=zen("standard_prompt_only")["train"],
    )
    previous = {n: p.clone() for n, p in trainer.model.named_parameters()}
    trainer.train()
    assert trainer.state.log_history[-1]["train_loss"] is not None
    assert_params_changed(previous, trainer.model)


def test_warning_raised_all_rewards_none(hub, tmp_path, caplog):
    def always_none_reward_func(completions, **kwargs):
        return [None] * len(completions)

    trainer = PowerSelfRewardTrainer(
        model=hub["causal_lm"],
        reward_funcs=always_none_reward_func,
        args=rloo_args(tmp_path),
        train_dataset=zen("standard_prompt_only")["train"],
    )
    with caplog.at_level(logging.WARNING, logger="trl.trainer.rloo_trainer"):
        trainer.train()
    assert "All reward functions returned None for the following kwargs:" in caplog.text


def test_correct_reward_processing_classes_list(hub, tmp_path):
    reward_models = [hub["tiny-SequenceClassification"], hub["tiny-SequenceClassification-2"]]
    processing_classes = [tokenizer(), tokenizer()]
    trainer = PowerSelfRewardTrainer(
        model=hub["causal_lm"],
        reward_funcs=reward_models,
        reward_processing_classes=processing_classes,
        args=PowerSelfRewardConfig(output_dir=str(tmp_path), report_to="none"),
        train_dataset=zen("standard_prompt_only")["train"],
    )
    assert len(trainer.reward_processing_classes) == len(reward_models)


def test_single_reward_model_with_single_processing_class(hub, tmp_path):
    single = tokenizer()
    trainer = PowerSelfRewardTrainer(
        model=hub["causal_lm"],
        reward_funcs=hub["tiny-SequenceClassification"],
        reward_processing_classes=single,
        args=PowerSelfRewardConfig(output_dir=str(tmp_path), report_to="none"),
        train_dataset=zen("standard_prompt_only")["train"],
    )
    assert len(trainer.reward_processing_classes) == 1
    assert trainer.reward_processing_classes[0] == single


def test_train_beta_zero_is_refused_with_what_to_do_instead(tmp_path):
    """TRL's test_train_beta_zero trains with beta=0; here that is the intended difference: without the KL term the
    optimum is a point mass, not p_ref^alpha."""
    with pytest.raises(ValueError, match="beta=0.*RLOOTrainer"):
        rloo_args(tmp_path, beta=0.0)


# ----- SFT ------------------------------------------------------------------------------------------------------------


def test_tag_added(hub, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # args=None: the trainer's default output_dir is relative
    dataset = zen("standard_language_modeling")["train"]
    trainer = PowerDistillTrainer(model=hub["causal_lm"], train_dataset=dataset)
    for tag in ["sft", "trl"]:
        assert tag in trainer.model.model_tags


def test_tag_added_peft(hub, tmp_path, monkeypatch):
    from peft import LoraConfig

    monkeypatch.chdir(tmp_path)
    dataset = zen("standard_language_modeling")["train"]
    trainer = PowerDistillTrainer(model=hub["causal_lm"], train_dataset=dataset, peft_config=LoraConfig())
    for tag in ["sft", "trl"]:
        assert tag in trainer.model.model_tags


def test_init_with_training_arguments(hub, tmp_path):
    args = TrainingArguments(output_dir=str(tmp_path), report_to="none", use_cpu=True)
    trainer = PowerDistillTrainer(
        model=hub["causal_lm"], args=args, train_dataset=zen("standard_language_modeling")["train"]
    )
    assert isinstance(trainer.args, PowerDistillConfig) and trainer.args.output_dir == str(tmp_path)


def test_train(hub, tmp_path):
    trainer = PowerDistillTrainer(
        model=hub["causal_lm"],
        args=PowerDistillConfig(output_dir=str(tmp_path), learning_rate=0.1, report_to="none"),
        train_dataset=zen("standard_language_modeling")["train"],
    )
    previous = {n: p.clone() for n, p in trainer.model.named_parameters()}
    trainer.train()
    assert trainer.state.log_history[-1]["train_loss"] is not None
    assert_params_changed(previous, trainer.model)


def test_train_with_formatting_func(hub, tmp_path):
    def formatting_prompts_func(example):
        chosen, rejected = example["chosen"], example["rejected"]
        return f"### Chosen: {chosen}\n### Rejected: {rejected}"

    trainer = PowerDistillTrainer(
        model=hub["causal_lm"],
        args=PowerDistillConfig(output_dir=str(tmp_path), report_to="none"),
        train_dataset=zen("standard_implicit_prompt_preference")["train"],
        formatting_func=formatting_prompts_func,
    )
    previous = {n: p.clone() for n, p in trainer.model.named_parameters()}
    trainer.train()
    assert trainer.state.log_history[-1]["train_loss"] is not None
    assert_params_changed(previous, trainer.model)


def test_train_with_non_chatml_conversational_data(hub, tmp_path):
    dataset = zen("conversational_language_modeling")["train"]

    def rename_fields(example: list[dict]):
        return {"conversations": [{"from": m["role"], "value": m["content"]} for m in example["messages"]]}

    dataset = dataset.map(rename_fields, remove_columns="messages")
    trainer = PowerDistillTrainer(
        model=hub["causal_lm"],
        args=PowerDistillConfig(output_dir=str(tmp_path), report_to="none"),
        train_dataset=dataset,
        processing_class=tokenizer(),
    )
    previous = {n: p.clone() for n, p in trainer.model.named_parameters()}
    trainer.train()
    assert trainer.state.log_history[-1]["train_loss"] is not None
    assert_params_changed(previous, trainer.model)


def test_train_with_compute_metrics(hub, tmp_path):
    dataset = zen("standard_language_modeling")

    def dummy_compute_metrics(eval_pred):
        return {"my_metric": 0.123}

    trainer = PowerDistillTrainer(
        model=hub["causal_lm"],
        args=PowerDistillConfig(
            output_dir=str(tmp_path),
            eval_strategy="steps",
            eval_steps=3,
            report_to="none",
            per_device_train_batch_size=2,
        ),  # fmt: skip
        train_dataset=dataset["train"],
        eval_dataset=dataset["test"],
        compute_metrics=dummy_compute_metrics,
    )
    trainer.train()
    assert trainer.state.log_history[-2]["eval_my_metric"] == 0.123


def test_train_peft_config_sft(hub, tmp_path):
    from peft import LoraConfig

    model = AutoModelForCausalLM.from_pretrained(hub["causal_lm"], dtype="float32")
    base_param_names = [f"base_model.model.{n}" for n, _ in model.named_parameters()]
    trainer = PowerDistillTrainer(
        model=model,
        args=PowerDistillConfig(output_dir=str(tmp_path), learning_rate=0.1, report_to="none"),
        train_dataset=zen("standard_language_modeling")["train"],
        peft_config=LoraConfig(),
    )
    previous = {n: p.clone() for n, p in trainer.model.named_parameters()}
    trainer.train()
    for n, param in previous.items():
        new_param = trainer.model.get_parameter(n)
        if n in base_param_names:
            torch.testing.assert_close(param, new_param, msg=f"Parameter {n} has changed.")
        elif "base_layer" not in n:
            assert not torch.equal(param, new_param), f"Parameter {n} has not changed."


# ----- the private hooks and the supported TRL range ------------------------------------------------------------------


def test_the_private_hooks_of_the_installed_trl_are_those_the_trainers_override():
    """Every private RLOOTrainer / SFTTrainer / Trainer method the trainers override or call exists in the installed TRL
    with the parameters the trainers pass, and the installed TRL is in SUPPORTED_TRL (trl_power/trainers/utils.py)."""
    import warnings

    from trl import RLOOTrainer, SFTTrainer

    from trl_power.trainers.utils import PRIVATE_HOOKS, check_private_hooks

    with warnings.catch_warnings():
        warnings.simplefilter("error")  # outside SUPPORTED_TRL would warn
        check_private_hooks(RLOOTrainer)
        check_private_hooks(SFTTrainer)
    # the registry lists every private method of the parents that a trainer overrides
    for parent, ours in (("RLOOTrainer", PowerSelfRewardTrainer), ("SFTTrainer", PowerDistillTrainer)):
        base = RLOOTrainer if parent == "RLOOTrainer" else SFTTrainer
        overridden = {
            m
            for m, v in vars(ours).items()
            if callable(v)
            and m.startswith("_")
            and not m.startswith("__")
            and callable(getattr(base, m, None))
        }
        assert overridden <= set(PRIVATE_HOOKS[parent]), (parent, overridden - set(PRIVATE_HOOKS[parent]))


def test_a_trl_that_changed_a_hook_fails_loudly_with_what_to_do():
    """A TRL whose RLOOTrainer lost a hook, or whose hook takes other parameters, is refused when the trainer is built,
    with the hook's name and the supported range; a version outside the range only warns."""
    from unittest import mock

    import trl
    from trl import RLOOTrainer

    from trl_power.trainers.utils import SUPPORTED_TRL, check_private_hooks

    class Changed(RLOOTrainer):
        def _get_per_token_logps_and_entropies(self, model, inputs, logits_to_keep):
            pass

    # RLOOTrainer's own methods without one of the hooks (a subclass would inherit it)
    missing = type(
        "RLOOTrainer", (), {k: v for k, v in vars(RLOOTrainer).items() if k != "_calculate_rewards"}
    )
    with pytest.raises(RuntimeError, match=r"no RLOOTrainer\._calculate_rewards.*trl>=1\.10,<1\.17"):
        check_private_hooks(missing)
    with pytest.raises(RuntimeError, match=r"_get_per_token_logps_and_entropies.*takes \(model, inputs"):
        check_private_hooks(Changed, "RLOOTrainer")
    with mock.patch.object(trl, "__version__", "9.0.0"), pytest.warns(UserWarning, match="verified on"):
        check_private_hooks(RLOOTrainer)
    assert SUPPORTED_TRL == (">=1.10", "<1.17")


# ----- the configs' positional order ------------------------------------------------------------------------------------


def project_configs_with_output_dir() -> list[type]:
    """Every dataclass of trl_power (its modules imported) that has an `output_dir` field."""
    import dataclasses
    import importlib
    import pkgutil

    import trl_power

    found = {}
    for info in pkgutil.walk_packages(trl_power.__path__, "trl_power."):
        if info.name.endswith("__main__") or info.name.startswith("trl_power.tasks.checkpoints"):
            continue
        module = importlib.import_module(info.name)
        for obj in vars(module).values():
            if (
                isinstance(obj, type)
                and obj.__module__.startswith("trl_power")
                and dataclasses.is_dataclass(obj)
                and "output_dir" in {f.name for f in dataclasses.fields(obj)}
            ):
                found[obj.__qualname__] = obj
    return list(found.values())


def test_every_config_takes_output_dir_first():
    """`Config("my-run")` sets output_dir, as every TrainingArguments (PowerDistillConfig's VLLMArguments fields came
    first and took it as `use_vllm`, which broke `PowerDistillTrainer(model, train_dataset=...)` without args)."""
    import dataclasses

    configs = project_configs_with_output_dir()
    names = {c.__name__ for c in configs}
    assert {"PowerDistillConfig", "PowerSelfRewardConfig", "PowerSampleConfig", "EvaluateConfig"} <= names
    for config in configs:
        first = next(f for f in dataclasses.fields(config) if f.init)
        assert first.name == "output_dir", f"{config.__name__}'s first positional field is {first.name}"
    assert PowerDistillConfig("my-run", report_to="none").output_dir == "my-run"
    assert PowerSelfRewardConfig("my-run", report_to="none").output_dir == "my-run"
