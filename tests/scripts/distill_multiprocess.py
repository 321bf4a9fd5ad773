"""Two-process run of PowerDistillTrainer, launched by tests/test_distill.py with

    accelerate launch --multi_gpu --num_processes 2 tests/scripts/distill_multiprocess.py MODEL_DIR WORK_DIR

(`use_cpu=True`: without it `--multi_gpu` on a machine with no GPU starts two unrelated single processes).

1. Offline, weighted: one plain SGD step (no clipping) on WORK_DIR/teacher (saved by the test), 4 rows per process =
   the whole data set. The rows are split across the processes, so the update equals the single-process full-batch
   gradient of sum_i w_i NLL_i / sum_i w_i T_i only if the weighted token count is summed over both processes. Rank 0
   saves the updated weights to WORK_DIR/offline.pt for the test to compare.
2. Online (PEFT): two steps on two prompts, one per process; each process draws its own teacher samples.

Each process writes WORK_DIR/rank{r}.json.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch
from datasets import Dataset, load_from_disk
from peft import LoraConfig
from transformers import AutoModelForCausalLM, PreTrainedTokenizerFast

from trl_power import PowerDistillConfig, PowerDistillTrainer, PowerSamplingConfig
from trl_power.scripts.utils import finish_processes
from trl_power.trainers.utils import CPU_RUN


def args(out: Path, **kwargs) -> PowerDistillConfig:
    defaults = dict(
        output_dir=str(out),
        per_device_train_batch_size=4,
        max_steps=1,
        learning_rate=0.5,
        optim="sgd",
        lr_scheduler_type="constant",
        max_grad_norm=0.0,
        logging_steps=1,
        **CPU_RUN,
        finished_only=False,  # the rows are particles weighted for the truncated target
        weight_sampling=False,  # the weighted-batch step is what is compared
        seed=0,
    )
    return PowerDistillConfig(**{**defaults, **kwargs})


def main(model_dir: str, work_dir: str) -> None:
    torch.set_num_threads(1)
    work = Path(work_dir)
    tokenizer = PreTrainedTokenizerFast.from_pretrained(model_dir)

    def model():
        return AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)

    offline = PowerDistillTrainer(
        model(),
        args(work / "offline"),
        train_dataset=load_from_disk(str(work / "teacher")),
        processing_class=tokenizer,
    )
    state = offline.accelerator.state
    offline.train()
    if state.is_main_process:
        torch.save({k: v.detach().cpu() for k, v in offline.model.state_dict().items()}, work / "offline.pt")

    sampling = PowerSamplingConfig(method="exact", alpha=4.0, max_new_tokens=3, num_samples_per_prompt=16)
    online = PowerDistillTrainer(
        model(),
        args(
            work / "online",
            sampling_config=sampling,
            finished_only=None,  # the sampling config's
            per_device_train_batch_size=1,
            max_steps=2,
            learning_rate=1e-2,
        ),
        train_dataset=Dataset.from_dict({"prompt": ["q", "q a"]}),
        processing_class=tokenizer,
        peft_config=LoraConfig(r=4, lora_alpha=8, target_modules="all-linear"),
    )
    online.train()
    report = {
        "rank": state.process_index,
        "num_processes": state.num_processes,
        "distributed_type": str(state.distributed_type),
        "offline_steps": offline.state.global_step,
        "online_steps": online.state.global_step,
        "online_teacher_calls": online._teacher_calls,
        "online_prompts_sampled": sorted(online._teacher_cache),
        "online_logged": sorted({k for h in online.state.log_history for k in h}),
    }
    (work / f"rank{state.process_index}.json").write_text(json.dumps(report))


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
    finish_processes()
