"""`PowerSelfRewardTrainer` with TRL's vLLM colocate mode on CPU, run by tests/test_vllm_engine.py in its own process
(TRL builds an in-process engine on a one-process torch.distributed group, which must not leak into the test session):

    python tests/scripts/self_reward_vllm.py MODEL_DIR OUT_DIR

Writes OUT_DIR/result.json: whether the completions came from vLLM, the logged metric names, and whether the weights
moved.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch

from trl_power.trainers.utils import CPU_RUN


def main(model_dir: str, out_dir: str) -> None:
    from datasets import Dataset
    from transformers import PreTrainedTokenizerFast

    from trl_power import PowerSelfRewardConfig, PowerSelfRewardTrainer

    torch.set_num_threads(1)
    args = PowerSelfRewardConfig(
        output_dir=out_dir,
        per_device_train_batch_size=4,
        num_generations=4,
        max_completion_length=3,
        max_steps=2,
        learning_rate=1e-2,
        logging_steps=1,
        use_vllm=True,
        vllm_mode="colocate",
        vllm_gpu_memory_utilization=0.3,  # on CPU: of the NUMA node's host memory
        vllm_max_model_length=16,
        **CPU_RUN,
    )
    trainer = PowerSelfRewardTrainer(
        model=model_dir,
        args=args,
        train_dataset=Dataset.from_dict({"prompt": ["q", "q a"] * 8}),
        processing_class=PreTrainedTokenizerFast.from_pretrained(model_dir),
    )
    before = {n: p.detach().clone() for n, p in trainer.model.named_parameters()}
    calls = []
    llm = trainer.vllm_generation.llm
    original = llm.generate

    def spy(*a, **k):
        calls.append(1)
        return original(*a, **k)

    llm.generate = spy
    trainer.train()
    result = {
        "vllm_generate_calls": len(calls),
        "logged": sorted({k for h in trainer.state.log_history for k in h}),
        "moved": any(not torch.equal(p, before[n]) for n, p in trainer.model.named_parameters()),
        "self_reward": [h["self_reward/mean"] for h in trainer.state.log_history if "self_reward/mean" in h],
    }
    Path(out_dir).mkdir(parents=True, exist_ok=True)
    (Path(out_dir) / "result.json").write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
