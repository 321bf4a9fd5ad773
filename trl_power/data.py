"""Teacher data sets drawn from the power distribution p_alpha(y|x) ∝ p(y|x)^alpha, with any power sampler.

`generate_power_dataset` turns prompts into a `datasets.Dataset` of (prompt, completion) rows for power
self-distillation (docs/design.md, section 1): min_theta KL(p_alpha || pi_theta) = max_theta E_{y~p_alpha}[log pi_theta(y|x)].

Reproducibility, resumption and sharding rest on one rule: the prompts are cut into fixed *shards* of `shard_size`
consecutive prompts, and shard s is sampled by one `PowerSampler.sample` call whose seed is derived from
(seed, s) alone. Since the sampler seeds chain j of the k-th prompt of a call by (call seed, k, j), every row is a
deterministic function of (model, prompts, sampling config, seed, shard_size): it does not depend on how many
processes share the work, on which process drew it, on the sampler's `batch_size`, or on interruptions. A shard is
also the unit of work and of checkpointing: it is written to `output_dir` atomically (temporary file + rename) when
it is done, and a rerun skips the shards already on disk.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
from collections.abc import Iterator, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch

from trl_power.prompts import prompt_format, tokenize_prompt
from trl_power.sampling import PowerSampler, PowerSamplingConfig
from trl_power.sampling.engine import is_vllm_llm
from trl_power.seeding import derived_seed, fresh_seed
from trl_power.teacher import ROW_COLUMNS, merge_identical_particles, teacher_rows

METADATA_KEY = "trl_power"
MANIFEST_FILE = "power_dataset.json"
SHARD_DIR = "shards"
MERGED_DIR = "dataset"
HUB_METADATA_FILE = "trl_power_dataset.json"
FORMAT_VERSION = 1

# Columns written by `generate_power_dataset` (besides the extra columns carried over from an input data set): the
# teacher row (`trl_power.teacher`), the shard and the cost per answer.
COLUMNS = (*ROW_COLUMNS, "shard", "stats")

# Sampler statistics that add up over the runs of a call (divided by the number of runs to get a per-run cost);
# every other numeric statistic (acceptance rate, mean ESS, ...) is an average already and is copied.
_ADDITIVE_STATS = (
    "prefill_tokens",
    "decode_tokens",
    "tokens_forwarded",
    "seconds",
    "new_tokens",
    "mh_attempts",
    "resample_count",
    "runs_without_finished",
)


def _prompt_kind(prompts: list[Any]) -> str:
    """The one format of all prompts (text, conversational or ids); a `ValueError` for none or a mix."""
    if not prompts:
        raise ValueError("No prompts.")
    kinds = {prompt_format(p) for p in prompts}
    if len(kinds) > 1:
        raise ValueError(f"All prompts must have one format; found {sorted(kinds)}.")
    return kinds.pop()


def _prompts_from_input(prompts_or_dataset: Any) -> tuple[list[Any], Any]:
    """(list of prompts, input `datasets.Dataset` or None)."""
    from datasets import Dataset

    if isinstance(prompts_or_dataset, Dataset):
        if "prompt" not in prompts_or_dataset.column_names:
            raise ValueError(
                f"The data set needs a 'prompt' column; it has {prompts_or_dataset.column_names}. "
                "Rename the prompt column with `dataset.rename_column(..., 'prompt')`."
            )
        clash = sorted(set(prompts_or_dataset.column_names) & (set(COLUMNS) - {"prompt"}))
        if clash:
            raise ValueError(
                f"The prompt data set already has the column(s) {clash}, which generate_power_dataset writes. "
                "Pass a prompt-only data set (remove or rename those columns)."
            )
        return list(prompts_or_dataset["prompt"]), prompts_or_dataset
    if isinstance(prompts_or_dataset, str | bytes) or not isinstance(prompts_or_dataset, Sequence):
        raise TypeError(
            "prompts_or_dataset must be a list of prompts (strings, message lists or token-id lists) or a "
            f"datasets.Dataset with a 'prompt' column, got {type(prompts_or_dataset).__name__}."
        )
    return list(prompts_or_dataset), None


# ----- seeds, fingerprints, metadata ---------------------------------------------------------------------------------


def shard_seed(seed: int, shard: int) -> int:
    """The sampler seed of shard `shard`: derived from (seed, shard) alone."""
    return derived_seed(seed, shard)


def _sampling_dict(config: PowerSamplingConfig) -> dict[str, Any]:
    return config.to_dict()


def _fingerprint(
    prompts: list[Any],
    config: PowerSamplingConfig,
    shard_size: int,
    model_id: str | None,
    merge_particles: bool = False,
) -> str:
    """What decides the rows: prompts, sampling settings (not batch_size / show_progress), shard size, model, merging."""
    settings = {k: v for k, v in _sampling_dict(config).items() if k not in ("batch_size", "show_progress")}
    run = {"prompts": prompts, "sampling": settings, "shard_size": shard_size, "model": model_id}
    if merge_particles:  # only when set, so that runs written before the option resume
        run["merge_particles"] = True
    blob = json.dumps(
        run,
        sort_keys=True,
        default=str,
    )
    return hashlib.sha256(blob.encode()).hexdigest()


def _model_id(model: Any) -> str | None:
    if is_vllm_llm(model):
        return str(model.llm_engine.model_config.model)
    config = getattr(model, "config", None)
    name = getattr(config, "_name_or_path", None) or getattr(config, "name_or_path", None)
    return str(name) if name else None


def power_dataset_metadata(dataset: Any) -> dict[str, Any] | None:
    """The metadata `generate_power_dataset` stored in `dataset.info.description` (None for other data sets):
    `sampling_config` (with the seed actually used), `alpha`, `method`, `model`, `shard_size`, `num_prompts`,
    `prompt_format`, `hub_dataset_id`, `format_version`."""
    info = getattr(dataset, "info", None)
    return _metadata_from_text(getattr(info, "description", None) or "")


def _metadata_from_text(text: str) -> dict[str, Any] | None:
    try:
        data = json.loads(text)
    except (TypeError, ValueError):
        return None
    return data.get(METADATA_KEY) if isinstance(data, dict) else None


def with_power_metadata(
    dataset: Any, source: str | os.PathLike, revision: str | None = None, token: str | None = None
) -> Any:
    """`dataset` with the metadata of `generate_power_dataset` restored from `source`, the Hub repository (or a local
    copy of one) it was loaded from. `push_to_hub` keeps the rows but not `info.description`, where the metadata lives
    (the Hub's card holds features and splits only), so the push also uploads it as `trl_power_dataset.json`; this
    reads it back. A data set that has its metadata, that lacks the columns of `generate_power_dataset` (no file is
    looked for then: a prompt data set costs no request), or whose source has no such file, is returned as it is."""
    columns = set(getattr(dataset, "column_names", None) or ())
    if (
        power_dataset_metadata(dataset) is not None
        or not {"prompt_ids", "completion_ids", "stats"} <= columns
    ):
        return dataset
    local = Path(source).expanduser()
    if local.is_dir():
        path = local / HUB_METADATA_FILE
        if not path.is_file():
            return dataset
    else:
        from huggingface_hub import hf_hub_download
        from huggingface_hub.errors import (
            EntryNotFoundError,
            LocalEntryNotFoundError,
            RepositoryNotFoundError,
        )

        try:
            path = Path(
                hf_hub_download(
                    str(source), HUB_METADATA_FILE, repo_type="dataset", revision=revision, token=token
                )
            )
        except (EntryNotFoundError, LocalEntryNotFoundError, RepositoryNotFoundError):
            return dataset
    text = path.read_text(encoding="utf-8")
    if _metadata_from_text(text) is None:
        raise ValueError(f"{HUB_METADATA_FILE} of {source} does not hold trl-power metadata.")
    dataset.info.description = text
    return dataset


def load_power_dataset(name: str | os.PathLike, split: str = "train", **load_dataset_kwargs: Any) -> Any:
    """A teacher data set pushed by `generate_power_dataset(..., push_to_hub=True)`, with its metadata:
    `datasets.load_dataset(name, split=split, **load_dataset_kwargs)` then `with_power_metadata`, so that
    `power_dataset_metadata` (and `PowerDistillTrainer`'s checks of alpha and of the target) see the sampling
    config again. Also reads a local copy of such a repository, and the `output_dir` of `generate_power_dataset`."""
    from datasets import load_dataset, load_from_disk

    local = Path(name).expanduser()
    for folder in (local / MERGED_DIR, local):
        if (folder / "state.json").exists():  # written by save_to_disk: the description is kept
            return load_from_disk(str(folder))
    dataset = load_dataset(str(name), split=split, **load_dataset_kwargs)
    return with_power_metadata(
        dataset, name, load_dataset_kwargs.get("revision"), load_dataset_kwargs.get("token")
    )


# ----- rows of one shard ---------------------------------------------------------------------------------------------


def _per_run_stats(stats: dict[str, Any], num_runs: int) -> dict[str, float]:
    out = {}
    for key, value in stats.items():
        if isinstance(value, bool) or not isinstance(value, int | float) or key == "num_samples":
            continue
        out[key] = float(value) / num_runs if key in _ADDITIVE_STATS else float(value)
    return out


def _shard_rows(
    sampler: PowerSampler,
    config: PowerSamplingConfig,
    prompts: list[Any],
    prompt_ids: list[list[int]],
    start: int,
    shard: int,
    merge_particles: bool = False,
) -> list[dict[str, Any]]:
    """Sample one shard (global prompts start..start+len(prompts)-1): its teacher rows (`trl_power.teacher`), each with
    its shard and the cost per answer; identical particles of a prompt merged (`merge_identical_particles`) if asked."""
    sampler.config = config
    out = sampler.sample(prompt_ids)
    stats = _per_run_stats(out.stats, len(prompts) * config.num_samples_per_prompt)
    rows = teacher_rows(
        out,
        prompts,
        prompt_ids,
        config.num_samples_per_prompt,
        first_prompt_index=start,
        tokenizer=sampler.tokenizer,
    )
    if merge_particles and out.weights is not None:
        rows = merge_identical_particles(rows)
    return [{**row, "shard": shard, "stats": dict(stats)} for row in rows]


def _write_jsonl_atomic(path: Path, rows: list[dict[str, Any]]) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with open(tmp, "w", encoding="utf-8") as f:
        for row in rows:
            f.write(json.dumps(row, ensure_ascii=False) + "\n")
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)  # atomic: a shard file exists only once it is complete


def _read_jsonl(path: Path) -> list[dict[str, Any]]:
    with open(path, encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def _shard_path(output_dir: Path, shard: int) -> Path:
    return output_dir / SHARD_DIR / f"shard-{shard:06d}.jsonl"


# ----- building the data set -----------------------------------------------------------------------------------------


def _build_dataset(rows: list[dict[str, Any]], input_dataset: Any, metadata: dict[str, Any]) -> Any:
    from datasets import Dataset, DatasetInfo, concatenate_datasets

    keys = sorted({k for row in rows for k in row["stats"]})
    for row in rows:
        row["stats"] = {k: row["stats"].get(k) for k in keys}
    rows.sort(key=lambda r: (r["prompt_index"], r["sample_index"], r["particle_index"]))
    description = json.dumps({METADATA_KEY: metadata}, sort_keys=True)
    dataset = Dataset.from_list(rows, info=DatasetInfo(description=description))
    if input_dataset is not None and len(input_dataset.column_names) > 1:
        extra = input_dataset.remove_columns("prompt").select(dataset["prompt_index"]).flatten_indices()
        dataset = concatenate_datasets([dataset, extra], axis=1, info=DatasetInfo(description=description))
    return dataset


def _push(
    dataset: Any, metadata: dict[str, Any], repo_id: str, private: bool | None, token: str | None
) -> None:
    """Push through the datasets API; the metadata also goes up as a JSON file (the card keeps no description)."""
    from huggingface_hub import HfApi

    dataset.push_to_hub(repo_id, private=private, token=token)
    HfApi(token=token).upload_file(
        path_or_fileobj=json.dumps({METADATA_KEY: metadata}, indent=1, sort_keys=True).encode(),
        path_in_repo=HUB_METADATA_FILE,
        repo_id=repo_id,
        repo_type="dataset",
        token=token,
    )


def generate_power_dataset(
    model: torch.nn.Module | str,
    tokenizer: Any,
    prompts_or_dataset: Any,
    sampling_config: PowerSamplingConfig | None = None,
    output_dir: str | os.PathLike | None = None,
    *,
    shard_size: int = 64,
    merge_particles: bool = False,
    overwrite: bool = False,
    push_to_hub: bool = False,
    hub_dataset_id: str | None = None,
    hub_private: bool | None = None,
    hub_token: str | None = None,
    show_progress: bool = False,
) -> Any:
    """Draw teacher completions from p_alpha(y|x) ∝ p(y|x)^alpha for every prompt, as a `datasets.Dataset`.

    ```python
    config = PowerSamplingConfig(method="smc", alpha=4.0, max_new_tokens=256, num_particles=16)
    dataset = generate_power_dataset(model, tokenizer, prompts, config, output_dir="teacher")
    ```

    Args:
        model: A transformers causal LM (PEFT included), a `vllm.LLM` (`trl_power.load_vllm`; under
            `accelerate launch` one per process, `trl_power.sampling.vllm_engine.load_vllm_for_processes`), or a path /
            Hub id loaded with `AutoModelForCausalLM` onto this process's device (under `accelerate launch`, load your
            own model per process onto `PartialState().device`; it is not moved).
        tokenizer: Its tokenizer (`None` with a model path: loaded from the same path).
        prompts_or_dataset: Prompts (strings, conversational message lists, or token-id lists), or a
            `datasets.Dataset` with a `prompt` column; its other columns are carried over to every row of the prompt.
        sampling_config: Any `PowerSamplingConfig` (default: `PowerSamplingConfig()`). `num_samples_per_prompt`
            completions per prompt; with `return_all_particles` (SMC/SIR) every particle becomes a weighted row.
            `seed=None` draws a seed, which is recorded so that a resumed run continues with it.
        output_dir: Where shards are written as they are done (`shards/shard-NNNNNN.jsonl`), the manifest
            (`power_dataset.json`) and the merged data set (`dataset/`, `datasets.load_from_disk`). A rerun with
            the same arguments resumes: finished shards are read back, the others are sampled. `None`: in memory.
        shard_size: Prompts per shard. Rows depend on it (each shard has its own seed), not on the number of
            processes, the sampler batch size or interruptions.
        merge_particles: With `return_all_particles`: one row per distinct completion of a prompt, weighted by the
            sum of its particles' weights over the prompt's runs, and no weight-0 rows
            (`trl_power.teacher.merge_identical_particles`). Every prompt's weighted distribution, and so the
            distillation loss, is unchanged; the rows are fewer (after SMC's resampling the particles repeat). A
            merged row keeps the `sample_index` and `particle_index` of its first particle.
        overwrite: Delete a previous run in `output_dir` whose settings differ, instead of raising.
        push_to_hub: Push the data set to `hub_dataset_id` with `Dataset.push_to_hub` (main process), plus its
            metadata as `trl_power_dataset.json`.
        hub_dataset_id, hub_private, hub_token: Repository id, visibility and token of the push.
        show_progress: A progress bar over shards on each process.

    Returns:
        A `datasets.Dataset`, one row per completion (rows ordered by prompt, then sample, then particle), columns:
        `prompt` (as given); `completion` (text continuing the prompt without special tokens, as
        `PowerSamplingOutput.completions`: SFT appends EOS to it, `PowerDistillTrainer` only where `finished`; for
        conversational prompts `[{"role": "assistant", "content": text}]`); `prompt_ids`,
        `completion_ids` (the exact sampled ids, EOS included when generated); `base_logprob` (log p(y|x), summed
        over the completion tokens); `weight` (1.0, or the particle's self-normalised weight within its run for
        `return_all_particles`: each run has total weight 1, or 0 when no particle finished under `finished_only`);
        `num_tokens`; `finished` (ended with EOS within `max_new_tokens`); `prompt_index` (position in the input), `sample_index` (run j of the prompt),
        `particle_index`; `shard`; `stats` (the sampler's statistics per run, i.e. per answer: tokens forwarded,
        prefill/decode tokens and seconds of its shard divided by the shard's runs, acceptance rate, mean ESS...).
        `power_dataset_metadata(dataset)` returns the sampling config (with the seed used), model and shard size.

    Under `accelerate launch` the pending shards are split round-robin across processes; every process returns the
    full data set, merged by the main process (through `output_dir`, or gathered in memory without it). The
    processes wait for each other with `torch.distributed` barriers, whose default timeout (30 minutes for gloo)
    must exceed the slowest process's share of the sampling.
    """
    from accelerate import PartialState
    from datasets import load_from_disk

    if shard_size < 1:
        raise ValueError(f"shard_size must be >= 1, got {shard_size}")
    if push_to_hub and not hub_dataset_id:
        raise ValueError("push_to_hub=True needs hub_dataset_id ('user/name').")
    config = sampling_config if sampling_config is not None else PowerSamplingConfig()
    if not isinstance(config, PowerSamplingConfig):
        raise TypeError(f"sampling_config must be a PowerSamplingConfig, got {type(config).__name__}")
    prompts, input_dataset = _prompts_from_input(prompts_or_dataset)
    kind = _prompt_kind(prompts)

    state = PartialState()
    if isinstance(model, str | os.PathLike):
        from transformers import AutoModelForCausalLM, AutoTokenizer

        path = str(model)
        tokenizer = tokenizer if tokenizer is not None else AutoTokenizer.from_pretrained(path)
        model = AutoModelForCausalLM.from_pretrained(path, dtype="auto").to(state.device)
    prompt_ids = [tokenize_prompt(tokenizer, p) for p in prompts]
    model_id = _model_id(model)
    num_shards = -(-len(prompts) // shard_size)
    out_dir = Path(output_dir) if output_dir is not None else None

    # 1. The seed and the manifest (main process), so that every process and every rerun uses the same seed.
    fingerprint = _fingerprint(prompts, config, shard_size, model_id, merge_particles)
    seed = _run_seed(state, out_dir, config.seed, fingerprint, num_shards, overwrite)
    used_config = replace(config, seed=int(seed), show_progress=False)
    push_args = (push_to_hub, hub_dataset_id, hub_private, hub_token)
    metadata = {
        "format_version": FORMAT_VERSION,
        "sampling_config": _sampling_dict(used_config),
        "alpha": used_config.alpha,
        "method": used_config.method,
        "model": model_id,
        "shard_size": shard_size,
        "merge_particles": merge_particles,
        "num_prompts": len(prompts),
        "prompt_format": kind,
        "hub_dataset_id": hub_dataset_id if push_to_hub else None,
    }

    # 2. Pending shards, listed by every process before any of them writes.
    if out_dir is not None and (out_dir / MERGED_DIR).exists():  # a finished run: nothing to sample
        dataset = load_from_disk(str(out_dir / MERGED_DIR))
        if push_to_hub and state.is_main_process:
            _push(dataset, metadata, hub_dataset_id, hub_private, hub_token)
        state.wait_for_everyone()
        return dataset
    pending = [s for s in range(num_shards) if out_dir is None or not _shard_path(out_dir, s).exists()]
    if out_dir is not None:
        state.wait_for_everyone()
    mine = pending[state.process_index :: state.num_processes]

    # 3. Sample this process's shards (written to output_dir as each is done).
    local_rows = _sample_shards(
        PowerSampler(model, tokenizer, used_config),
        mine,
        prompts,
        prompt_ids,
        shard_size,
        out_dir,
        state,
        show_progress,
        merge_particles,
    )

    # 4. Merge (main process), save, push.
    with _datasets_progress(show_progress):
        return _merge(state, out_dir, num_shards, local_rows, input_dataset, metadata, push_args)


def _run_seed(
    state: Any, out_dir: Path | None, seed: int | None, fingerprint: str, num_shards: int, overwrite: bool
) -> int:
    """Step 1 of `generate_power_dataset`: the run's seed. With `output_dir`, the manifest's (written by the main
    process on the first run, so that every process and every rerun uses it; a run with another fingerprint is
    refused or, with `overwrite`, deleted); else the given seed, or one drawn by the main process."""
    from accelerate.utils import gather_object

    if out_dir is None:
        if seed is not None:
            return seed
        drawn = [fresh_seed()]
        return gather_object(drawn)[0] if state.num_processes > 1 else drawn[0]
    manifest_path = out_dir / MANIFEST_FILE
    if state.is_main_process:
        manifest = json.loads(manifest_path.read_text()) if manifest_path.exists() else None
        if manifest is not None and manifest.get("fingerprint") != fingerprint and overwrite:
            shutil.rmtree(out_dir / SHARD_DIR, ignore_errors=True)
            shutil.rmtree(out_dir / MERGED_DIR, ignore_errors=True)
            manifest = None
        if manifest is None:
            manifest = {
                "fingerprint": fingerprint,
                "seed": seed if seed is not None else fresh_seed(),
                "num_shards": num_shards,
            }
            (out_dir / SHARD_DIR).mkdir(parents=True, exist_ok=True)
            _write_text_atomic(manifest_path, json.dumps(manifest, indent=1))
    state.wait_for_everyone()
    manifest = json.loads(manifest_path.read_text())
    if manifest.get("fingerprint") != fingerprint:  # raised on every process, so none waits at a barrier
        raise ValueError(
            f"{out_dir} holds a run with other prompts, sampling settings, shard size or model. Use another "
            "output_dir, or overwrite=True to delete it."
        )
    return manifest["seed"]


def _sample_shards(
    sampler: PowerSampler,
    shards: list[int],
    prompts: list[Any],
    prompt_ids: list[list[int]],
    shard_size: int,
    out_dir: Path | None,
    state: Any,
    show_progress: bool,
    merge_particles: bool = False,
) -> list[dict[str, Any]]:
    """Step 3 of `generate_power_dataset`: sample `shards` with the sampler's config, shard s seeded by
    shard_seed(seed, s); each written to `out_dir` when done (then nothing is returned), or returned as rows."""
    from tqdm.auto import tqdm

    config, rows = sampler.config, []
    for s in tqdm(shards, desc=f"power data set (process {state.process_index})", disable=not show_progress):
        lo, hi = s * shard_size, min(len(prompts), (s + 1) * shard_size)
        shard = _shard_rows(
            sampler,
            replace(config, seed=shard_seed(config.seed, s)),
            prompts[lo:hi],
            prompt_ids[lo:hi],
            lo,
            s,
            merge_particles,
        )
        if out_dir is not None:
            _write_jsonl_atomic(_shard_path(out_dir, s), shard)
        else:
            rows += shard
    return rows


def _merge(state, out_dir, num_shards, local_rows, input_dataset, metadata, push_args) -> Any:
    """Step 4 of `generate_power_dataset`: merge the shards (main process), save, push; every process returns."""
    from accelerate.utils import gather_object
    from datasets import load_from_disk

    push_to_hub, hub_dataset_id, hub_private, hub_token = push_args
    if out_dir is None:
        rows = gather_object(local_rows) if state.num_processes > 1 else local_rows
        dataset = _build_dataset(rows, input_dataset, metadata)
        if push_to_hub and state.is_main_process:
            _push(dataset, metadata, hub_dataset_id, hub_private, hub_token)
        state.wait_for_everyone()
        return dataset
    state.wait_for_everyone()
    if state.is_main_process:
        missing = [s for s in range(num_shards) if not _shard_path(out_dir, s).exists()]
        if missing:
            raise RuntimeError(f"Shards {missing[:10]} are missing after sampling; rerun to resume.")
        rows = [row for s in range(num_shards) for row in _read_jsonl(_shard_path(out_dir, s))]
        dataset = _build_dataset(rows, input_dataset, metadata)
        tmp = out_dir / f".{MERGED_DIR}.tmp"
        shutil.rmtree(tmp, ignore_errors=True)
        dataset.save_to_disk(str(tmp))
        os.replace(tmp, out_dir / MERGED_DIR)
        if push_to_hub:
            _push(dataset, metadata, hub_dataset_id, hub_private, hub_token)
    state.wait_for_everyone()
    return load_from_disk(str(out_dir / MERGED_DIR))


@contextlib.contextmanager
def _datasets_progress(show: bool) -> Iterator[None]:
    """The `datasets` library's own progress bars (map, save_to_disk) follow `show_progress`."""
    from datasets.utils import are_progress_bars_disabled, disable_progress_bars, enable_progress_bars

    restore = not show and not are_progress_bars_disabled()
    if restore:
        disable_progress_bars()
    try:
        yield
    finally:
        if restore:
            enable_progress_bars()


def _write_text_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)
