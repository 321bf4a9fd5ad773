"""Two-process run of `generate_power_dataset`, launched by tests/test_data.py with

    accelerate launch --multi_gpu --num_processes 2 tests/scripts/data_multiprocess.py MODEL_DIR WORK_DIR

(`PartialState(cpu=True)`: without it `--multi_gpu` on a machine with no GPU starts two unrelated single processes).
The prompts and sampling settings come from WORK_DIR/settings.json, written by the test. Three runs:

- WORK_DIR/fresh: a fresh run into an empty output_dir;
- WORK_DIR/partial: a resume of the interrupted single-process run the test left there;
- no output_dir: the rows are gathered in memory.

Each process writes WORK_DIR/rank{r}.json: its distributed state, the shards it sampled in each run, and the rows of
the in-memory run.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch
from accelerate import PartialState

import trl_power.data as data
from trl_power import PowerSamplingConfig, generate_power_dataset
from trl_power.scripts.utils import finish_processes


def main(model_dir: str, work_dir: str) -> None:
    torch.set_num_threads(1)
    state = PartialState(cpu=True)
    from transformers import AutoModelForCausalLM, PreTrainedTokenizerFast

    work = Path(work_dir)
    settings = json.loads((work / "settings.json").read_text())
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    tokenizer = PreTrainedTokenizerFast.from_pretrained(model_dir)  # as in the test (not AutoTokenizer)
    config = PowerSamplingConfig(**settings["sampling"])

    sampled: dict[str, list[int]] = {}
    original = data._shard_rows

    def recording_shard_rows(sampler, cfg, prompts, prompt_ids, start, shard, *rest):
        sampled.setdefault(current, []).append(shard)
        return original(sampler, cfg, prompts, prompt_ids, start, shard, *rest)

    data._shard_rows = recording_shard_rows
    results = {}
    for current in ("fresh", "partial", "memory"):
        out_dir = None if current == "memory" else work / current
        dataset = generate_power_dataset(
            model, tokenizer, settings["prompts"], config, out_dir, shard_size=settings["shard_size"]
        )
        results[current] = len(dataset)
        if current == "memory":
            memory_rows = dataset.remove_columns("stats").to_list()

    report = {
        "rank": state.process_index,
        "num_processes": state.num_processes,
        "distributed_type": str(state.distributed_type),
        "sampled": sampled,
        "lengths": results,
        "memory_rows": memory_rows,
    }
    (work / f"rank{state.process_index}.json").write_text(json.dumps(report))


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
    finish_processes()
