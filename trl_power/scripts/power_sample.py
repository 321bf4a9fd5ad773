"""Power-sample a prompt data set: teacher data for power self-distillation, or answers to evaluate.

    accelerate launch recipes/power_sample.py --config recipes/configs/qwen2.5-math-7b/sample.yaml
    trl-power sample --config recipes/configs/qwen2.5-math-7b/sample.yaml --accelerate_config multi_gpu
    python recipes/power_sample.py --config recipes/configs/tiny/sample.yaml          # offline, CPU, seconds

Every process loads the model and samples its share of the prompt shards (`generate_power_dataset`); finished shards
are written to `output_dir/shards/` as they complete, so a rerun resumes. The main process merges them into
`output_dir/dataset/` (`datasets.load_from_disk`; `recipes/power_distill.py` reads it as `dataset_name`) and pushes it to
the Hub with `push_to_hub`. Columns: prompt, completion, prompt_ids, completion_ids, base_logprob (log p(y|x)), weight,
num_tokens, finished, prompt_index, sample_index, particle_index, shard, stats (cost per answer), and the data set's
own columns (e.g. the gold answers).
"""

from __future__ import annotations

from trl import ModelConfig

from trl_power import generate_power_dataset
from trl_power.scripts.utils import (
    PowerSampleConfig,
    PowerScriptArguments,
    build_parser,
    init_processes,
    load_prompts,
    load_sampling_model,
    run_script,
)


def main(script_args: PowerScriptArguments, config: PowerSampleConfig, model_args: ModelConfig) -> None:
    state = init_processes()
    prompts = load_prompts(script_args, script_args.dataset_train_split)
    model, tokenizer = load_sampling_model(model_args, config)

    dataset = generate_power_dataset(
        model,
        tokenizer,
        prompts,
        config.sampling_config(),
        output_dir=config.output_dir,
        shard_size=config.shard_size,
        merge_particles=config.merge_particles,
        overwrite=config.overwrite,
        push_to_hub=config.push_to_hub,
        hub_dataset_id=config.hub_dataset_id,
        hub_private=config.hub_private,
        show_progress=True,
    )

    if state.is_main_process:
        tokens = sum(s["tokens_forwarded"] for s in dataset["stats"]) / len(dataset)
        print(
            f"{len(dataset)} completions of {len(prompts)} prompts ({config.method}, alpha={config.alpha:g}): "
            f"{sum(dataset['num_tokens']) / len(dataset):.1f} new tokens and {tokens:.1f} tokens forwarded per "
            f"completion. Saved to {config.output_dir}/dataset"
            + (
                f", pushed to https://huggingface.co/datasets/{config.hub_dataset_id}."
                if config.push_to_hub
                else "."
            )
        )


def make_parser(prog: str | None = None):
    return build_parser(PowerScriptArguments, PowerSampleConfig, ModelConfig, prog=prog, description=__doc__)


if __name__ == "__main__":
    run_script(main, make_parser)
