"""Teacher rows: what a power sampler's answers become, for teacher data sets and for online distillation alike.

One row per completion y of a prompt x (an answer of a run, or one particle of a weighted SMC/SIR set):

    prompt, completion          the prompt as given; the completion text (`PowerSamplingOutput.completions`, special
                                tokens skipped), for a conversational prompt [{"role": "assistant", "content": text}]
    prompt_ids, completion_ids  the ids the sampler used and drew (EOS included when generated): what is trained on
    weight                      1, or the particle's self-normalised weight within its run (the run sums to 1)
    finished                    ended with EOS within max_new_tokens (a cut answer has weight 0 in the finished target)
    base_logprob, num_tokens    log p(y|x) under the sampled model; len(completion_ids)
    prompt_index, sample_index, particle_index

`teacher_rows` builds the rows of a `PowerSamplingOutput` (`trl_power.data.generate_power_dataset` writes them, with
a shard and the per-answer cost, and `PowerDistillTrainer`'s online teacher trains on them); `training_example` is the
one tokenized example of a row that the student is trained on: input_ids = prompt_ids + completion_ids, the loss on
the completion tokens only, weighted by `weight`. The text is for reading and for text-only consumers; training uses
the ids, so nothing is decoded and re-encoded on the way.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from trl_power.prompts import prompt_format
from trl_power.sampling.config import PowerSamplingOutput

#: The columns of a teacher row (a data set adds `shard` and `stats`, and the input data set's own columns).
ROW_COLUMNS = (
    "prompt",
    "completion",
    "prompt_ids",
    "completion_ids",
    "base_logprob",
    "weight",
    "num_tokens",
    "finished",
    "prompt_index",
    "sample_index",
    "particle_index",
)


def teacher_rows(
    out: PowerSamplingOutput,
    prompts: Sequence[Any],
    prompt_ids: Sequence[Sequence[int]],
    samples_per_prompt: int,
    first_prompt_index: int = 0,
    tokenizer: Any = None,
) -> list[dict[str, Any]]:
    """The rows of a sampler output for `prompts` (their ids `prompt_ids`, as sampled); `samples_per_prompt` runs per
    prompt, each one answer or (weighted output) a set of particles. Prompt indices start at `first_prompt_index`.
    The assistant message of a conversational prompt holds the completion decoded on its own (`tokenizer`), not the
    text continuing the prompt (which may start with the joining space). Raises a `RuntimeError` when the output
    does not hold the same number of rows for every prompt."""
    per_run = len(out) // max(1, len(prompts) * samples_per_prompt) if out.weights is not None else 1
    seen: dict[int, int] = {}
    rows = []
    for k in range(len(out)):
        local = out.prompt_indices[k]
        order = seen.get(local, 0)
        seen[local] = order + 1
        ids = [int(t) for t in out.completion_ids[k]]
        completion: Any = out.completions[k]
        if prompt_format(prompts[local]) == "conversational":
            text = tokenizer.decode(ids, skip_special_tokens=True) if tokenizer is not None else completion
            completion = [{"role": "assistant", "content": text}]
        rows.append(
            {
                "prompt": prompts[local],
                "completion": completion,
                "prompt_ids": [int(t) for t in prompt_ids[local]],
                "completion_ids": ids,
                "base_logprob": float(out.base_logprobs[k]),
                "weight": float(out.weights[k]) if out.weights is not None else 1.0,
                "num_tokens": len(ids),
                "finished": bool(out.finished[k]),
                "prompt_index": first_prompt_index + local,
                "sample_index": order // per_run,
                "particle_index": order % per_run,
            }
        )
    expected = samples_per_prompt * per_run
    if len(seen) != len(prompts) or any(n != expected for n in seen.values()):
        raise RuntimeError(
            f"The sampler returned {sorted(seen.values())} rows per prompt for {len(prompts)} prompts; expected "
            f"{expected} each (num_samples_per_prompt x particles)."
        )
    return rows


def training_example(row: dict[str, Any], max_length: int | None = None) -> dict[str, Any]:
    """The tokenized example of a teacher row: input_ids = prompt_ids + completion_ids, completion_mask 1 on the
    completion tokens (the loss), the row's `weight` (1 when it has none); cut to `max_length` tokens."""
    prompt, completion = list(row["prompt_ids"]), list(row["completion_ids"])
    example = {
        "input_ids": prompt + completion,
        "completion_mask": [0] * len(prompt) + [1] * len(completion),
        "weight": float(row.get("weight", 1.0)),
    }
    if max_length is not None:
        example["input_ids"] = example["input_ids"][:max_length]
        example["completion_mask"] = example["completion_mask"][:max_length]
    return example


def merge_identical_particles(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Weighted particle rows with identical (`prompt_index`, `completion_ids`) merged into one row whose weight is
    their sum (over the particles of a run and over the runs of the prompt), weight-0 rows dropped. The distillation
    loss sum_i w_i NLL_i / sum_i w_i T_i is a sum over rows, so it is unchanged, and so is every prompt's weighted
    empirical distribution sum_n w_n delta(y_n); the rows are far fewer (Gemma 3 270M, 3-shot arithmetic, SMC-16,
    4 runs a prompt: 64 particles, 9.6 distinct completions). The first row of a group keeps its indices."""
    merged: dict[tuple, dict[str, Any]] = {}
    for row in rows:
        if row["weight"] <= 0:
            continue
        key = (row["prompt_index"], tuple(row["completion_ids"]))
        if key in merged:
            merged[key]["weight"] += row["weight"]
        else:
            merged[key] = dict(row)
    return list(merged.values())
