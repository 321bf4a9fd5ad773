"""Run a recipe under `accelerate launch` and record what this process sampled, for tests/test_recipes.py:

    accelerate launch --config_file accelerate_configs/multi_cpu.yaml tests/scripts/recipe_multiprocess.py \
        OUT_DIR recipes/evaluate.py --config CONFIG.yaml

`PowerSampler.sample` is wrapped to log the prompt ids of every call; the recipe then runs as its own `__main__`.
Each process writes OUT_DIR/rank{r}.json: its rank, the process group it belonged to and the prompts it sampled.
"""

from __future__ import annotations

import json
import runpy
import sys
from pathlib import Path

from trl_power.sampling import PowerSampler


def main(out_dir: str, recipe: str, *recipe_args: str) -> None:
    calls: list[list[list[int]]] = []
    original = PowerSampler.sample

    def sample(self, prompts):
        calls.append([list(map(int, p)) for p in prompts])
        return original(self, prompts)

    PowerSampler.sample = sample
    sys.argv = [recipe, *recipe_args]
    sys.path.insert(0, str(Path(recipe).resolve().parent))
    runpy.run_path(recipe, run_name="__main__")

    from accelerate import PartialState

    state = PartialState()
    Path(out_dir).mkdir(parents=True, exist_ok=True)
    (Path(out_dir) / f"rank{state.process_index}.json").write_text(
        json.dumps(
            {
                "rank": state.process_index,
                "num_processes": state.num_processes,
                "distributed_type": str(state.distributed_type),
                "backend": state.backend,
                "calls": calls,
            }
        )
    )


if __name__ == "__main__":
    main(*sys.argv[1:])
