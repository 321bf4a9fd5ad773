"""Evaluate a model (or a distilled adapter) with a sampler: accuracy, pass@k, self-reward and cost per answer.

    accelerate launch recipes/evaluate.py --config recipes/configs/qwen2.5-math-7b/eval_mh.yaml
    trl-power eval --config recipes/configs/qwen2.5-math-7b/eval_mh.yaml --accelerate_config multi_gpu
    python recipes/evaluate.py --config recipes/configs/tiny/eval_plain.yaml         # offline, CPU, seconds

The answers are drawn like `recipes/power_sample.py` draws them (sharded over the processes, resumable, in
`output_dir/samples/`), then checked by the verifier on the main process (`verifier: math` for MATH-500 / GSM8K-style
data with `answer_column`, or an embedded task name). Written to `output_dir`:

- `metrics.json`: accuracy (± standard error over prompts), pass@k for every k <= answers per prompt, the mean
  self-reward log p_base(y|x) (for an adapter: under its base model, adapter disabled; `base_model_name_or_path` for
  a fully fine-tuned student), tokens forwarded and seconds
  per answer, acceptance rate / ESS, the sampling config; and with plain sampling (`method: temperature`,
  `temperature: 1`, >= 2 answers per prompt) the covariance diagnostic: whether power sampling at `alpha` should raise
  the accuracy, predicted from these base samples alone (`trl-power diagnose` runs it on any scored data set).
- `answers.jsonl`: one row per answer (prompt, completion, reward, self_reward, base_logprob, num_tokens, ...).

`model_name_or_path` may be left out when `dataset_name` already holds answers (the output of power_sample.py): they
are then scored as they are.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path

import torch
from accelerate.utils import is_peft_model
from trl import ModelConfig

from trl_power import generate_power_dataset
from trl_power.evaluation import evaluate_power_dataset, format_results
from trl_power.scoring import sequence_logprobs
from trl_power.scripts.utils import (
    PowerSampleConfig,
    PowerScriptArguments,
    build_parser,
    init_processes,
    load_data,
    load_model,
    load_prompts,
    load_sampling_model,
    load_verifier,
    run_script,
    write_json,
)


@dataclass
class EvaluateConfig(PowerSampleConfig):
    """How to sample the answers (every `PowerSampleConfig` field) and what to report.

    Args:
        output_dir: Folder for `metrics.json`, `answers.jsonl` and the sampled shards (`samples/`).
        pass_at_k: The k of pass@k (those above the number of answers per prompt are skipped).
        diagnostic_bootstrap: Bootstrap replicates of the covariance diagnostic (plain sampling only; 0: none).
        base_model_name_or_path: Model under which the self-reward log p_base(y|x) of the answers is computed.
            `None`: for an adapter its base model (adapter disabled), else the evaluated model itself.
        push_to_hub: Push the scored answers (and metrics.json) to the Hub data set `hub_dataset_id`.
        update_model_card: Record the measured accuracy (with its standard error, the method, data set, prompts and
            answers) in the model card (`README.md`) of a local `model_name_or_path`, e.g. a distilled adapter: the
            `trl_power.evaluation` metadata entry and an "Evaluation" section, replaced on every run.
    """

    output_dir: str = field(
        default="power-eval", metadata={"help": "Folder for metrics.json and answers.jsonl."}
    )
    pass_at_k: list[int] = field(default_factory=lambda: [1, 4, 8], metadata={"help": "The k of pass@k."})
    diagnostic_bootstrap: int = field(
        default=200, metadata={"help": "Bootstrap replicates of the covariance diagnostic (plain sampling)."}
    )
    base_model_name_or_path: str | None = field(
        default=None,
        metadata={
            "help": "Model under which the self-reward log p_base(y|x) is computed. None: the base model of an "
            "adapter (adapter disabled), else the evaluated model itself. Set it for a fully fine-tuned student."
        },
    )

    update_model_card: bool = field(
        default=False,
        metadata={"help": "Record the measured accuracy in the model card of a local model_name_or_path."},
    )

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.return_all_particles:
            raise ValueError("Evaluation needs one answer per run: set return_all_particles to false.")


def main(script_args: PowerScriptArguments, config: EvaluateConfig, model_args: ModelConfig) -> dict | None:
    state = init_processes()
    if script_args.verifier is None:
        raise ValueError("evaluate needs a verifier: `math` (with answer_column) or an embedded task name.")
    out = Path(config.output_dir)

    # 1. Answers: sampled now (sharded over the processes), or read from a power data set.
    if model_args.model_name_or_path is None:
        answers = load_data(script_args, script_args.dataset_test_split)
        if not {"completion", "base_logprob", "prompt_index", "stats"} <= set(answers.column_names):
            raise ValueError(
                "model_name_or_path is not set and the data set holds no answers to score (no completion / "
                "base_logprob / prompt_index / stats columns): set model_name_or_path to sample answers."
            )
        verifier = load_verifier(script_args, answers)
        model = None
    else:
        prompts = load_prompts(script_args, script_args.dataset_test_split)
        verifier = load_verifier(script_args, prompts)  # fails before the model is loaded
        model, tokenizer = load_sampling_model(model_args, config)
        answers = generate_power_dataset(
            model,
            tokenizer,
            prompts,
            config.sampling_config(),
            output_dir=out / "samples",
            shard_size=config.shard_size,
            overwrite=config.overwrite,
            show_progress=True,
        )
    if not state.is_main_process:
        return None

    # 2. Scores (main process): rewards, the self-reward log p_base (under an adapter's base model, adapter disabled,
    # or base_model_name_or_path; else the sampling model's own log p), cost (trl_power.evaluation).
    rewards = verifier.rewards(answers["prompt"], answers["completion"])
    # a PEFT adapter (accelerate's is_peft_model takes torch modules only: not a vllm.LLM)
    scorer = model if isinstance(model, torch.nn.Module) and is_peft_model(model) else None
    if config.base_model_name_or_path is not None:
        scorer, _ = load_model(
            dataclasses.replace(model_args, model_name_or_path=config.base_model_name_or_path)
        )
    self_rewards = list(answers["base_logprob"])
    if scorer is not None:
        self_rewards = sequence_logprobs(
            scorer,
            answers["prompt_ids"],
            answers["completion_ids"],
            batch_size=config.batch_size,
            disable_adapter=True,
        ).tolist()
    result, scores = evaluate_power_dataset(
        answers,
        rewards,
        self_rewards,
        ks=config.pass_at_k,
        alpha=config.alpha,
        diagnostic_bootstrap=config.diagnostic_bootstrap,
    )
    metrics = {
        **scores,
        "model": model_args.model_name_or_path,
        "dataset": script_args.dataset_name,
        "verifier": script_args.verifier,
    }

    # 3. Outputs.
    scored = answers.remove_columns([c for c in ("reward", "self_reward") if c in answers.column_names])
    scored = scored.add_column("reward", rewards).add_column("self_reward", self_rewards)
    scored.to_json(str(out / "answers.jsonl"))
    write_json(out / "metrics.json", metrics)
    print(format_results([result]))
    if metrics["diagnostic"] is not None:
        print(metrics["diagnostic"]["message"])
    if config.update_model_card:
        path = record_in_model_card(model_args.model_name_or_path, metrics)
        print(f"Accuracy recorded in {path}.")
    if config.push_to_hub:
        from huggingface_hub import HfApi

        scored.push_to_hub(config.hub_dataset_id, private=config.hub_private)
        HfApi().upload_file(
            path_or_fileobj=str(out / "metrics.json"),
            path_in_repo="metrics.json",
            repo_id=config.hub_dataset_id,
            repo_type="dataset",
        )
        print(f"Answers and metrics pushed to https://huggingface.co/datasets/{config.hub_dataset_id}.")
    return metrics


_EVALUATION_HEADING = "## Evaluation (trl-power eval)"


def record_in_model_card(model_dir: str | None, metrics: dict) -> Path:
    """Writes the measured accuracy into the model card of the local model folder `model_dir` (its README.md, made by
    the trainer's `create_model_card`): metadata `trl_power.evaluation` and a section, both replaced on a rerun."""
    from huggingface_hub import ModelCard

    path = Path(model_dir or "") / "README.md"
    if not model_dir or not path.is_file():
        raise ValueError(
            f"update_model_card needs a local model folder with a README.md; {path} does not exist."
        )
    card = ModelCard.load(path)
    record = {
        "accuracy": metrics["accuracy"],
        "accuracy_stderr": metrics["accuracy_stderr"],
        "method": metrics["method"],
        "dataset": metrics["dataset"],
        "verifier": metrics["verifier"],
        "num_prompts": metrics["num_prompts"],
        "num_answers": metrics["num_answers"],
        "tokens_per_answer": metrics["tokens_per_answer"],
    }
    entry = dict(card.data.to_dict().get("trl_power") or {})
    entry["evaluation"] = record
    card.data.trl_power = entry
    text = card.text.split(_EVALUATION_HEADING)[0].rstrip() + "\n\n" + _EVALUATION_HEADING + "\n\n"
    text += (
        f"Accuracy {record['accuracy']:.3f} (standard error {record['accuracy_stderr']:.3f}) with `{record['method']}` "
        f"sampling on {record['num_prompts']} prompts of `{record['dataset']}` ({record['num_answers']} answers, "
        f"verifier `{record['verifier']}`, {record['tokens_per_answer']:.1f} tokens forwarded per answer).\n"
    )
    card.text = text
    card.save(path)
    return path


def make_parser(prog: str | None = None):
    return build_parser(PowerScriptArguments, EvaluateConfig, ModelConfig, prog=prog, description=__doc__)


if __name__ == "__main__":
    run_script(main, make_parser)
