"""Train a model towards its own power distribution p_ref^alpha by self-reward RL (`PowerSelfRewardTrainer`).

    accelerate launch recipes/power_self_reward.py --config recipes/configs/qwen2.5-math-1.5b/self_reward.yaml
    trl-power self-reward --config recipes/configs/qwen2.5-math-1.5b/self_reward.yaml --accelerate_config multi_gpu
    python recipes/power_self_reward.py --config recipes/configs/tiny/self_reward.yaml      # offline, CPU, a minute

KL-regularised RL whose reward is the model's own sequence log-probability: the optimum is p_ref^alpha with
alpha = 1 + 1/beta (docs/self_reward.md). No reward function or answer is needed. With a `verifier` (e.g. `math` and
`answer_column`), its accuracy is added as a reward with weight `verifier_reward_weight`: 0 (default) only logs it,
with its covariance with the self-reward (`rewards/<name>/cov_self_reward`: sharpening helps the accuracy while it
is positive), and leaves the target p_ref^alpha unchanged.

Ends with `save_model` (the LoRA adapter with `use_peft`, else the model, and the tokenizer), the metrics
(`train_results.json`, and `trainer_state.json` with every logged value), a model card (`README.md`) in `output_dir`,
and with `push_to_hub` the push of the model and card to `hub_model_id`.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from trl import ModelConfig, get_peft_config, get_quantization_config

from trl_power import PowerSelfRewardConfig, PowerSelfRewardTrainer
from trl_power.scripts.utils import (
    PowerScriptArguments,
    build_parser,
    check_model,
    init_processes,
    load_prompts,
    load_verifier,
    run_script,
    train_and_save,
)
from trl_power.verifiers import as_reward_function


@dataclass
class SelfRewardScriptArguments(PowerScriptArguments):
    """`PowerScriptArguments`, and:

    Args:
        verifier_reward_weight: Weight of the verifier's accuracy in the reward. 0 (default): logged only, the
            target stays p_ref^alpha; w > 0 trains towards p_ref^alpha * exp(w * accuracy / beta).
    """

    verifier_reward_weight: float = field(
        default=0.0, metadata={"help": "Weight of the verifier's accuracy in the reward (0: only logged)."}
    )


def main(
    script_args: SelfRewardScriptArguments, training_args: PowerSelfRewardConfig, model_args: ModelConfig
):
    init_processes()
    check_model(model_args)
    training_args.model_init_kwargs = {
        "revision": model_args.model_revision,
        "attn_implementation": model_args.attn_implementation,
        "dtype": model_args.dtype,
        **(training_args.model_init_kwargs or {}),
    }
    train_dataset = load_prompts(script_args, script_args.dataset_train_split)
    eval_dataset = None
    if training_args.eval_strategy != "no":
        eval_dataset = load_prompts(script_args, script_args.dataset_test_split)
    verifier = load_verifier(script_args, *[d for d in (train_dataset, eval_dataset) if d is not None])
    reward_funcs = None
    if verifier is not None:
        reward_funcs = [as_reward_function(verifier)]
        if training_args.reward_weights is None:
            training_args.reward_weights = [script_args.verifier_reward_weight]

    trainer = PowerSelfRewardTrainer(
        model=model_args.model_name_or_path,
        reward_funcs=reward_funcs,
        args=training_args,
        train_dataset=train_dataset,
        eval_dataset=eval_dataset,
        quantization_config=get_quantization_config(model_args),
        peft_config=get_peft_config(model_args),
    )
    train_and_save(trainer, training_args, script_args.dataset_name)


def make_parser(prog: str | None = None):
    return build_parser(
        SelfRewardScriptArguments, PowerSelfRewardConfig, ModelConfig, prog=prog, description=__doc__
    )


if __name__ == "__main__":
    run_script(main, make_parser)
