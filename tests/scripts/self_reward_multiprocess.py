"""Two-process check of PowerSelfRewardTrainer, run by tests/test_self_reward.py with

    ACCELERATE_USE_CPU=true accelerate launch --multi_gpu --num_processes 2 tests/scripts/self_reward_multiprocess.py \
        MODEL_DIR OUT_DIR

Each prompt's group of `num_generations=4` completions is split over the two processes (2 per process), so a
correct leave-one-out baseline needs the other process's rewards. After every generation batch, each process
recomputes from scratch, for the *gathered* batch: log p_ref (fresh copy of the reference), log pi (the policy
before the update), the total reward R = w_self log p_ref + w_len * len - beta (log pi - log p_ref) and the
leave-one-out advantages over each group of 4, and compares them with the trainer's gathered rewards and
advantages. Results go to OUT_DIR/rank{r}.json.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch
from accelerate.utils import gather, gather_object
from datasets import Dataset
from transformers import AutoModelForCausalLM, AutoTokenizer

from trl_power import PowerSelfRewardConfig, PowerSelfRewardTrainer
from trl_power.scoring import sequence_logprobs
from trl_power.scripts.utils import finish_processes
from trl_power.trainers.utils import CPU_RUN

NUM_GENERATIONS = 4
LENGTH_WEIGHT = 0.5


def length_reward(completion_ids: list[list[int]], **kwargs) -> list[float]:
    return [float(len(c)) for c in completion_ids]


def main(model_dir: str, out_dir: str) -> None:
    torch.set_num_threads(1)
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    args = PowerSelfRewardConfig(
        output_dir=str(Path(out_dir) / "run"),
        alpha=3.0,
        reward_weights=[LENGTH_WEIGHT],
        per_device_train_batch_size=2,
        num_generations=NUM_GENERATIONS,
        max_completion_length=3,
        learning_rate=1e-3,
        max_steps=3,
        logging_steps=1,
        **CPU_RUN,
        seed=3,
    )
    dataset = Dataset.from_dict({"prompt": ["d", "a c d"] * 8})
    trainer = PowerSelfRewardTrainer(
        model=model_dir,
        reward_funcs=length_reward,
        args=args,
        train_dataset=dataset,
        processing_class=tokenizer,
    )
    state = trainer.accelerator.state
    reference = AutoModelForCausalLM.from_pretrained(model_dir).eval()
    checks: list[dict] = []
    captured: dict = {}

    original_rewards = trainer._calculate_rewards
    original_generate_and_score = trainer._generate_and_score_completions

    def calculate_rewards(inputs, prompts, completions, completion_ids_list):
        rewards_per_func = original_rewards(inputs, prompts, completions, completion_ids_list)
        captured["rewards_per_func"] = rewards_per_func.clone()
        captured["local_rows"] = len(completion_ids_list)
        return rewards_per_func

    def generate_and_score(inputs):
        # the policy before this batch's update is the policy that generated it
        output = original_generate_and_score(inputs)
        local_prompt_ids = [
            ids[mask.bool()].tolist() for ids, mask in zip(output["prompt_ids"], output["prompt_mask"])
        ]
        local_completion_ids = [
            ids[mask.bool()].tolist()
            for ids, mask in zip(output["completion_ids"], output["completion_mask"])
        ]
        prompt_ids = gather_object(local_prompt_ids)
        completion_ids = gather_object(local_completion_ids)
        advantages = gather(output["advantages"]).double()
        log_ref = sequence_logprobs(reference, prompt_ids, completion_ids).double()
        with torch.no_grad():
            log_pi = sequence_logprobs(trainer.model, prompt_ids, completion_ids).double()
        lengths = torch.tensor([float(len(c)) for c in completion_ids], dtype=torch.float64)
        reward = args.self_reward_weight * log_ref + LENGTH_WEIGHT * lengths - args.beta * (log_pi - log_ref)
        grouped = reward.view(-1, NUM_GENERATIONS)
        loo = grouped - (grouped.sum(1, keepdim=True) - grouped) / (NUM_GENERATIONS - 1)
        rewards_per_func = captured["rewards_per_func"].double()
        self_reward = torch.tensor(list(trainer._logs["extra"]["self_reward"]), dtype=torch.float64)
        groups = [prompt_ids[i : i + NUM_GENERATIONS] for i in range(0, len(prompt_ids), NUM_GENERATIONS)]
        checks.append(
            {
                "local_rows": captured["local_rows"],
                "gathered_rows": int(rewards_per_func.size(0)),
                "groups_share_a_prompt": all(all(p == g[0] for p in g) for g in groups),
                "reward_columns": int(rewards_per_func.size(1)),
                "self_reward_err": float((self_reward - log_ref).abs().max()),
                "length_err": float((rewards_per_func[:, 0] - lengths).abs().max()),
                "advantage_err": float((advantages - loo.view(-1)).abs().max()),
                "advantage_scale": float(loo.abs().max()),
                # what a baseline over the local rows only would give, to see the check can tell them apart
                "local_only_diff": float(
                    (
                        loo.view(-1)
                        - (
                            reward.view(-1, 2)
                            - (reward.view(-1, 2).sum(1, keepdim=True) - reward.view(-1, 2))
                        ).view(-1)
                    )
                    .abs()
                    .max()
                ),
            }
        )
        return output

    trainer._calculate_rewards = calculate_rewards
    trainer._generate_and_score_completions = generate_and_score
    trainer.train()
    result = {
        "rank": state.process_index,
        "num_processes": state.num_processes,
        "distributed_type": str(state.distributed_type),
        "backend": state.backend,
        "global_step": trainer.state.global_step,
        "checks": checks,
        "logged_keys": sorted({k for h in trainer.state.log_history for k in h}),
    }
    Path(out_dir).mkdir(parents=True, exist_ok=True)
    (Path(out_dir) / f"rank{state.process_index}.json").write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
    finish_processes()
