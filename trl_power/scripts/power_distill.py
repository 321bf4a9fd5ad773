"""Power self-distillation: train a student (usually a LoRA adapter on the base model) to answer like a power sampler.

    accelerate launch recipes/power_distill.py --config recipes/configs/qwen2.5-math-7b/distill.yaml
    trl-power distill --config recipes/configs/qwen2.5-math-7b/distill.yaml --accelerate_config multi_gpu
    python recipes/power_distill.py --config recipes/configs/tiny/distill.yaml             # offline, CPU, a minute

min_theta KL(p_alpha || pi_theta) is maximum likelihood on samples of p_alpha (`PowerDistillTrainer`, docs/distill.md):

- offline (default): `dataset_name` holds teacher completions, e.g. the output folder of `recipes/power_sample.py`
  (its exact sampled ids are trained on; SMC/SIR particle sets with their `weight`), that data set pushed to the Hub,
  or any prompt/completion data set;
- online (`sampling_config` set, e.g. `{"method": "smc", "alpha": 4.0, "max_new_tokens": 3072}`): `dataset_name`
  holds prompts only (read like the other recipes: `prompt_column`, `prompt_template`) and the trainer samples the
  teacher, the base model with the adapter disabled, during training.

Ends with `save_model` (the adapter with `use_peft`, and the tokenizer), the metrics (`train_results.json`,
`trainer_state.json`), a model card recording alpha, sampler and teacher (`README.md`), and with `push_to_hub` the push
of adapter and card to `hub_model_id`. Evaluate the student with `recipes/evaluate.py` (`model_name_or_path` = this
`output_dir`, `method: temperature`: one plain sample per answer).
"""

from __future__ import annotations

from trl import ModelConfig, get_peft_config, get_quantization_config

from trl_power import PowerDistillConfig, PowerDistillTrainer
from trl_power.scripts.utils import (
    PowerScriptArguments,
    build_parser,
    check_model,
    init_processes,
    load_data,
    load_prompts,
    run_script,
    train_and_save,
)


def main(
    script_args: PowerScriptArguments, training_args: PowerDistillConfig, model_args: ModelConfig
) -> None:
    init_processes()
    check_model(model_args)
    training_args.model_init_kwargs = {
        "revision": model_args.model_revision,
        "attn_implementation": model_args.attn_implementation,
        "dtype": model_args.dtype,
        **(training_args.model_init_kwargs or {}),
    }
    online = training_args.sampling_config is not None
    train_dataset = _teacher_data(script_args, script_args.dataset_train_split, prompts_only=online)
    eval_dataset = None
    if (
        training_args.eval_strategy != "no"
    ):  # always teacher completions: its loss estimates the cross-entropy
        eval_dataset = _teacher_data(script_args, script_args.dataset_test_split, prompts_only=False)

    trainer = PowerDistillTrainer(
        model=model_args.model_name_or_path,
        args=training_args,
        train_dataset=train_dataset,
        eval_dataset=eval_dataset,
        quantization_config=get_quantization_config(model_args),
        peft_config=get_peft_config(model_args),
    )
    train_and_save(trainer, training_args, script_args.dataset_name)


def _teacher_data(script_args: PowerScriptArguments, split: str, prompts_only: bool):
    """Prompts for online mode (template applied), else teacher completions as they are (first `max_prompts` rows)."""
    if prompts_only:
        return load_prompts(script_args, split)
    return load_data(script_args, split)


def make_parser(prog: str | None = None):
    return build_parser(PowerScriptArguments, PowerDistillConfig, ModelConfig, prog=prog, description=__doc__)


if __name__ == "__main__":
    run_script(main, make_parser)
