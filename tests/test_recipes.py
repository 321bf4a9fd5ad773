"""The recipes (trl_power/scripts) end to end on tiny models saved offline, from YAML configs written here; bad configs; 2 processes.

Every recipe runs in this process (`main(*parse_args(make_parser(), ["--config", yaml]))`, exactly what the script's
`__main__` does), except the two-process run, which goes through `accelerate launch` with accelerate_configs/multi_cpu.
The model is the embedded `aligned` task model (85k parameters) saved with `save_pretrained` into a temp dir.
"""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
import yaml
from datasets import load_from_disk
from launch import accelerate_launch

from trl_power.cli import script_commands
from trl_power.scoring import sequence_logprobs
from trl_power.scripts.utils import parse_args
from trl_power.tasks import get_task, load_task_model

ROOT = Path(__file__).resolve().parents[1]
TASK = get_task("aligned")
SMC = {"method": "smc", "alpha": 4.0, "max_new_tokens": 28, "num_particles": 4, "proposal_temperature": 0.5}


def run_recipe(command: str, config: dict, path: Path, *overrides: str):
    """Write `config` as YAML to `path` and run the recipe of `command` on it, in this process."""
    path.write_text(yaml.safe_dump(config))
    recipe = script_commands()[command].module()
    return recipe.main(*parse_args(recipe.make_parser(), ["--config", str(path), *overrides]))


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> dict[str, Path]:
    """The task model saved with save_pretrained, 8 training and 4 held-out prompts as jsonl."""
    root = tmp_path_factory.mktemp("recipes")
    model, tokenizer = load_task_model("aligned")
    model.save_pretrained(root / "model")
    tokenizer.save_pretrained(root / "model")
    train = [{"prompt": TASK.format_prompt(p)} for p in TASK.split("train")[:8]]
    evals = [{"prompt": p} for p in TASK.eval_prompts(4, seed=0)]
    return {
        "root": root,
        "model": root / "model",
        "train": write_jsonl(root / "train.jsonl", train),
        "eval": write_jsonl(root / "eval.jsonl", evals),
    }


@pytest.fixture
def hub(monkeypatch) -> dict[str, list]:
    """No Hub here: the calls that push data sets, files and model folders are recorded instead."""
    import huggingface_hub
    import transformers.trainer
    from datasets import Dataset

    calls: dict[str, list] = {"datasets": [], "files": [], "folders": []}

    class FakeApi:
        def __init__(self, *args, **kwargs):
            pass

        def create_repo(self, repo_id, **kwargs):
            return SimpleNamespace(repo_id=repo_id)

        def upload_folder(self, **kwargs):
            calls["folders"].append(
                {**kwargs, "files": sorted(p.name for p in Path(kwargs["folder_path"]).iterdir())}
            )
            return "https://huggingface.co/commit"

        def upload_file(self, **kwargs):
            calls["files"].append(kwargs)

    monkeypatch.setattr(
        Dataset, "push_to_hub", lambda self, repo_id, **kw: calls["datasets"].append((repo_id, self))
    )
    monkeypatch.setattr(huggingface_hub, "HfApi", FakeApi)
    monkeypatch.setattr(transformers.trainer, "hf_api", lambda: FakeApi())
    return calls


def test_sample_then_distill_then_evaluate_then_diagnose(tmp_path, files, hub):
    """The power-distillation pipeline: teacher data (SMC), a LoRA student, its evaluation, the diagnostic; the data
    set, the adapter with its model card, and the scored answers are pushed to a (mocked) Hub."""
    # 1. power_sample.py: 8 prompts x 2 samples in shards of 4
    teacher = tmp_path / "teacher"
    run_recipe(
        "sample",
        {
            "model_name_or_path": str(files["model"]),
            "dataset_name": str(files["train"]),
            **SMC,
            "num_samples_per_prompt": 2,
            "shard_size": 4,
            "output_dir": str(teacher),
            "push_to_hub": True,
            "hub_dataset_id": "someone/teacher",
        },
        tmp_path / "sample.yaml",
    )
    data = load_from_disk(str(teacher / "dataset"))
    assert len(data) == 16 and sorted(data["prompt_index"]) == sorted(list(range(8)) * 2)
    assert {"prompt", "completion", "prompt_ids", "completion_ids", "base_logprob", "stats"} <= set(
        data.column_names
    )
    assert len(list((teacher / "shards").glob("*.jsonl"))) == 2
    assert all(
        TASK.extract_answer(c) is not None for c in data["completion"]
    )  # the model writes whole traces

    # 2. power_distill.py: a LoRA student on those samples (offline mode)
    student = tmp_path / "student"
    run_recipe(
        "distill",
        {
            "model_name_or_path": str(files["model"]),
            "dataset_name": str(teacher),  # the output folder of power_sample.py
            "use_peft": True,
            "lora_r": 4,
            "lora_alpha": 8,
            "lora_target_modules": "all-linear",
            "per_device_train_batch_size": 8,
            "max_steps": 2,
            "learning_rate": 1e-2,
            "logging_steps": 1,
            "save_strategy": "no",
            "report_to": "none",
            "use_cpu": True,
            "bf16": False,
            "gradient_checkpointing": False,
            "output_dir": str(student),
            "push_to_hub": True,
            "hub_model_id": "someone/student",
        },
        tmp_path / "distill.yaml",
    )
    for name in ("adapter_config.json", "adapter_model.safetensors", "tokenizer.json", "README.md"):
        assert (student / name).exists(), name
    card = (student / "README.md").read_text()
    assert "Power self-distillation" in card and "alpha: 4.0" in card and "smc" in card
    assert "train_loss" in json.loads((student / "train_results.json").read_text())
    assert any("loss" in h for h in json.loads((student / "trainer_state.json").read_text())["log_history"])
    pushed = hub["folders"][-1]  # the adapter, tokenizer and card go up together
    assert pushed["repo_id"] == "someone/student"
    assert {"adapter_model.safetensors", "adapter_config.json", "README.md"} <= set(pushed["files"])

    # 3. evaluate.py on the student adapter: one plain sample per answer, 4 answers per held-out prompt
    evaluation = tmp_path / "eval"
    metrics = run_recipe(
        "eval",
        {
            "model_name_or_path": str(student),
            "dataset_name": str(files["eval"]),
            "verifier": "aligned",
            "method": "temperature",
            "max_new_tokens": 28,
            "num_samples_per_prompt": 4,
            "pass_at_k": [1, 4],
            "diagnostic_bootstrap": 20,
            "output_dir": str(evaluation),
            "push_to_hub": True,
            "hub_dataset_id": "someone/student-answers",
        },
        tmp_path / "eval.yaml",
    )
    metrics = json.loads(json.dumps(metrics))  # as written to metrics.json (keys of pass_at_k become strings)
    assert json.loads((evaluation / "metrics.json").read_text()) == metrics
    answers = [json.loads(line) for line in (evaluation / "answers.jsonl").read_text().splitlines()]
    assert len(answers) == 16 and metrics["num_prompts"] == 4 and metrics["num_answers"] == 16
    assert [a["reward"] for a in answers] == [TASK.verify(a["prompt"], a["completion"]) for a in answers]
    per_prompt = [[a["reward"] for a in answers if a["prompt_index"] == i] for i in range(4)]
    assert metrics["accuracy"] == pytest.approx(sum(sum(g) / len(g) for g in per_prompt) / 4)
    assert set(metrics["pass_at_k"]) == {"1", "4"} and metrics["tokens_per_answer"] > 0
    # the self-reward of an adapter's answers is log p under the BASE model (adapter disabled)
    base, _ = load_task_model("aligned")
    log_p_base = sequence_logprobs(
        base, [a["prompt_ids"] for a in answers], [a["completion_ids"] for a in answers]
    )
    assert torch.allclose(torch.tensor([a["self_reward"] for a in answers]), log_p_base, atol=1e-4)
    assert (
        max(abs(a["self_reward"] - a["base_logprob"]) for a in answers) > 1e-3
    )  # base_logprob: the student's
    assert metrics["mean_self_reward"] == pytest.approx(float(log_p_base.mean()), abs=1e-4)
    assert (
        metrics["diagnostic"]["alpha"] == 4.0
    )  # plain sampling with >= 2 answers: the covariance diagnostic

    # 4. trl-power diagnose on the scored answers reproduces evaluate's diagnostic
    from trl_power.cli import main as cli

    out = tmp_path / "diagnostic.json"
    args = ["diagnose", "--dataset_name", str(evaluation / "answers.jsonl"), "--bootstrap", "20"]
    assert cli([*args, "--output_file", str(out)]) == 0
    diagnostic = json.loads(out.read_text())
    assert diagnostic["predicted_gain"] == pytest.approx(metrics["diagnostic"]["predicted_gain"], abs=1e-9)
    assert diagnostic["num_prompts"] == 4 and diagnostic["samples_per_prompt"] == 4


def test_self_reward_recipe_with_a_logged_verifier(tmp_path, files):
    out = tmp_path / "self_reward"
    run_recipe(
        "self-reward",
        {
            "model_name_or_path": str(files["model"]),
            "dataset_name": str(files["train"]),
            "verifier": "aligned",  # logged with weight 0: the target stays p^alpha
            "use_peft": True,
            "lora_r": 4,
            "lora_alpha": 8,
            "lora_target_modules": "all-linear",
            "alpha": 4.0,
            "num_generations": 4,
            "per_device_train_batch_size": 4,
            "max_completion_length": 28,
            "max_steps": 2,
            "learning_rate": 1e-3,
            "logging_steps": 1,
            "save_strategy": "no",
            "report_to": "none",
            "use_cpu": True,
            "bf16": False,
            "gradient_checkpointing": False,
            "output_dir": str(out),
        },
        tmp_path / "self_reward.yaml",
    )
    for name in ("adapter_config.json", "adapter_model.safetensors", "tokenizer.json", "README.md"):
        assert (out / name).exists(), name
    assert "Power Self-Reward" in (out / "README.md").read_text()
    assert "train_loss" in json.loads((out / "train_results.json").read_text())
    logs = json.loads((out / "trainer_state.json").read_text())["log_history"]
    keys = {k for h in logs for k in h}
    assert {
        "self_reward/mean",
        "rewards/aligned_accuracy/mean",
        "rewards/aligned_accuracy/cov_self_reward",
    } <= keys
    assert all(h["alpha"] == 4.0 for h in logs if "alpha" in h)  # the verifier's weight 0 leaves alpha at 4


def test_distill_recipe_online_mode(tmp_path, files):
    """With `sampling_config` the data set holds prompts (read through prompt_column / prompt_template) and the
    trainer samples the teacher itself."""
    rows = [
        {"problem": p["prompt"].removeprefix("sum ")}
        for p in map(json.loads, files["train"].read_text().splitlines())
    ]
    out = tmp_path / "online"
    run_recipe(
        "distill",
        {
            "model_name_or_path": str(files["model"]),
            "dataset_name": str(write_jsonl(tmp_path / "problems.jsonl", rows)),
            "prompt_column": "problem",
            "prompt_template": "sum {prompt}",
            "sampling_config": {**SMC, "num_particles": 4},
            "use_peft": True,
            "lora_r": 4,
            "lora_alpha": 8,
            "lora_target_modules": "all-linear",
            "per_device_train_batch_size": 4,
            "max_steps": 2,
            "logging_steps": 1,
            "save_strategy": "no",
            "report_to": "none",
            "use_cpu": True,
            "bf16": False,
            "gradient_checkpointing": False,
            "output_dir": str(out),
        },
        tmp_path / "online.yaml",
    )
    assert (out / "adapter_model.safetensors").exists() and "online mode" in (out / "README.md").read_text()
    logs = json.loads((out / "trainer_state.json").read_text())["log_history"]
    teacher = [h for h in logs if "teacher/base_logprob" in h]
    assert len(teacher) == 2 and all(h["teacher/samples"] == 4 for h in teacher)


def test_evaluate_math_data_with_the_qwen_math_template(tmp_path):
    """MATH-style rows (problem, answer) through the `qwen_math` chat prompt and the math-verify verifier."""
    pytest.importorskip("math_verify")
    from trl_power.math_verifier import QWEN_MATH_SYSTEM_PROMPT, check_answer
    from trl_power.tiny_models import build_model, build_tokenizer

    words = [r"\boxed{4}", r"\boxed{2+2}", r"\boxed{\frac{8}{2}}", r"\boxed{5}", "so"]
    tokenizer = build_tokenizer(words)
    tokenizer.chat_template = "{% for m in messages %}{{ m['content'] }} {% endfor %}"
    model = build_model(len(tokenizer), seed=0, arch="llama", initializer_range=0.3)
    model.save_pretrained(tmp_path / "model")
    tokenizer.save_pretrained(tmp_path / "model")
    other = build_model(
        len(tokenizer), seed=1, arch="llama", initializer_range=0.3
    )  # "the base" of a full FT
    other.save_pretrained(tmp_path / "base")
    tokenizer.save_pretrained(tmp_path / "base")
    rows = [
        {"problem": "What is 2 + 2?", "answer": "4"},
        {"problem": "What is 10 / 2?", "answer": "5"},
        {"problem": "Simplify 16/4.", "answer": r"\frac{8}{2}"},
    ]
    metrics = run_recipe(
        "eval",
        {
            "model_name_or_path": str(tmp_path / "model"),
            "dataset_name": str(write_jsonl(tmp_path / "math.jsonl", rows)),
            "prompt_column": "problem",
            "prompt_template": "qwen_math",
            "answer_column": "answer",
            "verifier": "math",
            "method": "temperature",
            "max_new_tokens": 4,
            "num_samples_per_prompt": 8,
            "output_dir": str(tmp_path / "eval"),
            "base_model_name_or_path": str(tmp_path / "base"),
        },
        tmp_path / "eval.yaml",
    )
    answers = [json.loads(line) for line in (tmp_path / "eval" / "answers.jsonl").read_text().splitlines()]
    assert len(answers) == 24
    for a in answers:
        system, user = a["prompt"]
        assert system == {"role": "system", "content": QWEN_MATH_SYSTEM_PROMPT}
        assert user == {"role": "user", "content": a["problem"]}
        assert a["reward"] == check_answer(a["completion"], a["answer"])
    assert {a["reward"] for a in answers} == {
        0.0,
        1.0,
    }  # both right and wrong answers were drawn and told apart
    assert metrics["accuracy"] == pytest.approx(sum(a["reward"] for a in answers) / 24)
    # the self-reward is log p under base_model_name_or_path, base_logprob under the evaluated model
    ids = [a["prompt_ids"] for a in answers], [a["completion_ids"] for a in answers]
    assert torch.allclose(
        torch.tensor([a["self_reward"] for a in answers]), sequence_logprobs(other, *ids), atol=1e-4
    )
    assert torch.allclose(
        torch.tensor([a["base_logprob"] for a in answers]), sequence_logprobs(model, *ids), atol=1e-4
    )


# ----- bad configs fail fast, before any model is loaded --------------------------------------------------------------


BAD = [
    ("eval", {"mcmc_stepz": 3}, ValueError, r"'mcmc_stepz' \(did you mean 'mcmc_steps'\?\)"),
    ("self-reward", {"learning_rte": 0.1}, ValueError, r"'learning_rte' \(did you mean 'learning_rate'\?\)"),
    ("eval", {"model_name_or_path": None}, ValueError, "model_name_or_path is not set"),
    ("sample", {"model_name_or_path": "./no/such/model"}, FileNotFoundError, "does not exist"),
    (
        "sample",
        {"prompt_column": "question"},
        ValueError,
        r"has no column 'question'; its columns are \['prompt'\]",
    ),
    ("eval", {"answer_column": "solution", "verifier": "math"}, ValueError, "has no column 'solution'"),
    ("eval", {"verifier": "math"}, ValueError, "verifier: math needs answer_column"),
    ("eval", {"verifier": "algebra"}, ValueError, "verifier must be 'math', 'arithmetic' or a task name"),
    ("eval", {"method": "metropolis"}, ValueError, "method must be one of"),
    ("eval", {"prompt_template": "Solve: {problem}"}, ValueError, "has no column 'problem'"),
    ("distill", {"dataset_name": "./no/such/data.jsonl"}, FileNotFoundError, "does not exist"),
]


@pytest.mark.parametrize(
    ("command", "change", "error", "message"), BAD, ids=[f"{b[0]}-{next(iter(b[1]))}" for b in BAD]
)
def test_bad_configs_fail_fast_with_a_clear_message(
    tmp_path, files, monkeypatch, command, change, error, message
):
    from transformers import AutoModelForCausalLM

    def no_loading(*args, **kwargs):
        raise AssertionError("a model was loaded before the config was checked")

    monkeypatch.setattr(AutoModelForCausalLM, "from_pretrained", no_loading)
    config = {
        "model_name_or_path": str(files["model"]),
        "dataset_name": str(files["train"]),
        "dataset_test_split": "train",
        "verifier": "aligned" if command == "eval" else None,
        "output_dir": str(tmp_path / "out"),
        **change,
    }
    config = {k: v for k, v in config.items() if v is not None}
    if command in ("self-reward", "distill"):
        config.update(use_cpu=True, bf16=False, report_to="none")
    with pytest.raises(error, match=message):
        run_recipe(command, config, tmp_path / "bad.yaml")


CONFIG_RECIPES = {
    "sample": "sample",
    "eval": "eval",
    "distill": "distill",
    "self_reward": "self-reward",
}  # name prefix


@pytest.mark.parametrize(
    "path", sorted((ROOT / "recipes" / "configs").rglob("*.yaml")), ids=lambda p: str(p.relative_to(ROOT))
)
def test_shipped_configs_parse(path):
    """Every shipped config is valid for its recipe (no unknown field, valid values); the tiny ones point at files
    that ship with the repository (or that an earlier tiny job writes under outputs/)."""
    command = next(c for prefix, c in CONFIG_RECIPES.items() if path.stem.startswith(prefix))
    recipe = script_commands()[command].module()
    extra = (
        ["--use_cpu", "true"] if command in ("distill", "self-reward") else []
    )  # bf16 configs, on this CPU
    script_args, _, model_args = parse_args(recipe.make_parser(), ["--config", str(path), *extra])
    assert model_args.model_name_or_path and script_args.dataset_name
    text = path.read_text()
    assert text.startswith("#") and ("Hardware" in text or "GPU" in text), (
        "a config says what hardware it expects"
    )
    if path.parent.name == "tiny":
        for name in (model_args.model_name_or_path, script_args.dataset_name):
            assert name.startswith("outputs/") or (ROOT / name).exists(), name


# ----- two processes ------------------------------------------------------------------------------------------------


@pytest.mark.multiprocess
def test_evaluate_under_accelerate_with_two_cpu_processes(tmp_path, files):
    """accelerate_configs/multi_cpu.yaml: two gloo processes share the prompt shards (each samples its own, none
    twice), the main process merges and scores everything, and the answers equal a one-process run's."""
    prompts = [{"prompt": p} for p in TASK.eval_prompts(6, seed=1)]
    config = {
        "model_name_or_path": str(files["model"]),
        "dataset_name": str(write_jsonl(tmp_path / "prompts.jsonl", prompts)),
        "verifier": "aligned",
        **SMC,
        "num_samples_per_prompt": 2,
        "shard_size": 2,
        "pass_at_k": [1, 2],
        "output_dir": str(tmp_path / "two"),
    }
    (tmp_path / "eval.yaml").write_text(yaml.safe_dump(config))
    accelerate_launch(
        ROOT / "tests" / "scripts" / "recipe_multiprocess.py",
        tmp_path / "ranks",
        ROOT / "recipes" / "evaluate.py",
        "--config",
        tmp_path / "eval.yaml",
        config_file=ROOT / "accelerate_configs" / "multi_cpu.yaml",
    )

    ranks = [json.loads((tmp_path / "ranks" / f"rank{r}.json").read_text()) for r in (0, 1)]
    sampled = []
    for r in ranks:
        assert (
            r["num_processes"] == 2
            and r["distributed_type"] == "DistributedType.MULTI_CPU"
            and r["backend"] == "gloo"
        )
        assert len(r["calls"]) >= 1  # each process sampled at least one shard of 2 prompts
        sampled.append({tuple(p) for call in r["calls"] for p in call})
    assert not sampled[0] & sampled[1] and len(sampled[0] | sampled[1]) == 6  # disjoint shares, all prompts

    answers = [json.loads(line) for line in (tmp_path / "two" / "answers.jsonl").read_text().splitlines()]
    assert sorted(a["prompt_index"] for a in answers) == sorted(list(range(6)) * 2)
    assert {tuple(a["prompt_ids"]) for a in answers} == sampled[0] | sampled[1]
    metrics = json.loads((tmp_path / "two" / "metrics.json").read_text())
    assert metrics["num_prompts"] == 6 and metrics["num_answers"] == 12

    # the same config in one process gives the same answers (shard seeds do not depend on the process count)
    single = run_recipe("eval", {**config, "output_dir": str(tmp_path / "one")}, tmp_path / "one.yaml")
    one = [json.loads(line) for line in (tmp_path / "one" / "answers.jsonl").read_text().splitlines()]
    assert [a["completion_ids"] for a in one] == [a["completion_ids"] for a in answers]
    assert single["accuracy"] == metrics["accuracy"]
