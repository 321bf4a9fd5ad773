"""generate_power_dataset: rows, formats, metadata, interruption + resume, two processes, Hub push (mocked)."""

from __future__ import annotations

import json
import math
import shutil
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from datasets import Dataset, load_from_disk
from launch import accelerate_launch

import trl_power.data as data
from trl_power import PowerSampler, PowerSamplingConfig, generate_power_dataset
from trl_power.data import power_dataset_metadata, shard_seed
from trl_power.modeling import continuation_texts
from trl_power.prompts import tokenize_prompt
from trl_power.scoring import sequence_logprobs
from trl_power.tiny_models import build_model, build_tokenizer

REPO = Path(__file__).resolve().parents[1]
WORDS = ["a", "b", "c", "q"]
PROMPTS = ["q", "q a", "q b", "q c", "q a b", "q c c", "q b a", "q q", "q a c", "q c a"]
# SIR particle sets: weighted rows, 2 runs x 4 particles per prompt; 10 prompts in shards of 3 (the last has 1).
# Proposal at temperature 1 (the base model) and the truncated target, so that both EOS-ended and cut completions
# occur with positive weights.
SIR = PowerSamplingConfig(
    method="sir",
    alpha=3.0,
    max_new_tokens=3,
    num_particles=4,
    return_all_particles=True,
    num_samples_per_prompt=2,
    proposal_temperature=1.0,
    finished_only=False,
)
SHARD_SIZE = 3
FLOAT_COLUMNS = ("base_logprob", "weight")


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    """A random 5-token model and its tokenizer saved to disk (so that a subprocess loads the same weights)."""
    path = tmp_path_factory.mktemp("data_model")
    build_model(5, seed=3, initializer_range=0.25).save_pretrained(path)
    build_tokenizer(WORDS, with_pad=False).save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def model_and_tokenizer(model_dir):
    from transformers import AutoModelForCausalLM, PreTrainedTokenizerFast

    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    # Not AutoTokenizer: next to a qwen2 config it loads the word-level tokenizer as a Qwen2Tokenizer, whose
    # byte-level decoder joins words without spaces.
    return model, PreTrainedTokenizerFast.from_pretrained(model_dir)


@pytest.fixture(scope="module")
def reference(model_and_tokenizer, tmp_path_factory):
    """One uninterrupted single-process run: the rows every other run must reproduce."""
    model, tokenizer = model_and_tokenizer
    out = tmp_path_factory.mktemp("reference")
    return generate_power_dataset(model, tokenizer, PROMPTS, SIR, out, shard_size=SHARD_SIZE)


def assert_same_rows(a: Dataset, b: Dataset) -> None:
    """Same rows in the same order: ids and integers exactly, floats to float32 precision (stats, which hold
    timings, are not compared)."""
    assert len(a) == len(b)
    for col in a.column_names:
        if col == "stats":
            continue
        if col in FLOAT_COLUMNS:
            np.testing.assert_allclose(a[col], b[col], rtol=1e-5, atol=1e-6)
        else:
            assert a[col] == b[col], col


def test_rows_columns_weights_and_metadata(reference, model_and_tokenizer):
    model, tokenizer = model_and_tokenizer
    ds = reference
    per_prompt = SIR.num_samples_per_prompt * SIR.num_particles
    assert len(ds) == len(PROMPTS) * per_prompt
    assert set(data.COLUMNS) <= set(ds.column_names)
    # ordered by prompt, run, particle; every prompt present exactly once per (run, particle)
    keys = list(zip(ds["prompt_index"], ds["sample_index"], ds["particle_index"]))
    assert keys == sorted(keys) and len(set(keys)) == len(keys)
    assert sorted(set(ds["prompt_index"])) == list(range(len(PROMPTS)))
    assert [ds["prompt"][k] for k in range(0, len(ds), per_prompt)] == PROMPTS
    # each run's particle weights are normalised: total weight 1 per run
    w = np.asarray(ds["weight"]).reshape(len(PROMPTS), SIR.num_samples_per_prompt, SIR.num_particles)
    np.testing.assert_allclose(w.sum(-1), 1.0, atol=1e-9)
    assert (w >= 0).all()
    # base log-probs are log p(y|x) of the sampled ids under the model
    lp = sequence_logprobs(model, ds["prompt_ids"], ds["completion_ids"]).double().numpy()
    np.testing.assert_allclose(ds["base_logprob"], lp, atol=1e-4)
    assert ds["num_tokens"] == [len(c) for c in ds["completion_ids"]]
    assert ds["finished"] == [c[-1] == 0 for c in ds["completion_ids"]]
    assert any(ds["finished"]) and not all(ds["finished"])  # both kinds occur, so both are tested below
    # the text completion continues the prompt without EOS: prompt + completion, with EOS appended where the answer
    # finished (as SFT appends it), re-tokenizes to the sampled ids
    for row in ds:
        assert row["prompt_ids"] == tokenize_prompt(tokenizer, row["prompt"])
        eos = tokenizer.eos_token if row["finished"] else ""
        joined = tokenizer(text=row["prompt"] + row["completion"] + eos)["input_ids"]
        assert joined == row["prompt_ids"] + row["completion_ids"]
        assert tokenizer.eos_token not in row["completion"]
    # per-run sampler statistics
    stats = ds[0]["stats"]
    assert stats["tokens_forwarded"] > 0 and stats["seconds"] >= 0 and "mean_ess" in stats
    meta = power_dataset_metadata(ds)
    assert meta["alpha"] == 3.0 and meta["method"] == "sir" and meta["shard_size"] == SHARD_SIZE
    assert meta["sampling_config"]["seed"] == SIR.seed and meta["num_prompts"] == len(PROMPTS)
    assert PowerSamplingConfig(**meta["sampling_config"]) == replace(SIR, show_progress=False)


def test_shard_rows_are_a_plain_sampler_call(reference, model_and_tokenizer):
    """The reproducibility contract: shard s is PowerSampler(seed=shard_seed(seed, s)).sample(its prompts)."""
    model, tokenizer = model_and_tokenizer
    s = 2
    lo, hi = s * SHARD_SIZE, (s + 1) * SHARD_SIZE
    out = PowerSampler(model, tokenizer, replace(SIR, seed=shard_seed(SIR.seed, s))).sample(PROMPTS[lo:hi])
    rows = reference.filter(lambda r: r["shard"] == s)
    assert rows["completion_ids"] == out.completion_ids
    np.testing.assert_allclose(rows["weight"], out.weights, atol=1e-9)
    assert [lo + i for i in out.prompt_indices] == rows["prompt_index"]


def test_several_completions_per_prompt_and_extra_columns(model_and_tokenizer):
    model, tokenizer = model_and_tokenizer
    prompts = Dataset.from_dict({"prompt": ["q", "q a", "q b"], "answer": ["x", "y", "z"]})
    config = PowerSamplingConfig(method="temperature", max_new_tokens=3, num_samples_per_prompt=3, seed=5)
    ds = generate_power_dataset(model, tokenizer, prompts, config, shard_size=2)
    assert len(ds) == 9
    assert ds["prompt_index"] == [0, 0, 0, 1, 1, 1, 2, 2, 2]
    assert ds["sample_index"] == [0, 1, 2] * 3 and set(ds["particle_index"]) == {0}
    assert ds["weight"] == [1.0] * 9
    assert ds["answer"] == ["x"] * 3 + ["y"] * 3 + ["z"] * 3  # carried over from the prompt data set
    assert len({tuple(c) for c in ds["completion_ids"][:3]}) > 1  # independent chains, not copies


def test_token_id_and_conversational_prompts(model_and_tokenizer):
    model, tokenizer = model_and_tokenizer
    config = PowerSamplingConfig(method="mh", alpha=2.0, max_new_tokens=3, mcmc_steps=2, seed=1)
    ds = generate_power_dataset(model, tokenizer, [[4], [4, 1]], config)
    assert ds["prompt"] == [[4], [4, 1]] and ds["prompt_ids"] == [[4], [4, 1]]

    chat = build_tokenizer(WORDS, with_pad=False)
    chat.chat_template = (
        "{% for m in messages %}{{ m['content'] }}{% if not loop.last %} {% endif %}{% endfor %}"
        "{% if add_generation_prompt %} a{% endif %}"
    )
    messages = [[{"role": "user", "content": "q"}], [{"role": "user", "content": "q b"}]]
    ds = generate_power_dataset(model, chat, messages, config)
    assert ds["prompt"] == messages
    assert ds["prompt_ids"] == [[4, 1], [4, 2, 1]]  # chat template with the generation prompt (" a")
    for row in ds:
        (message,) = row["completion"]
        assert message["role"] == "assistant"
        assert message["content"] == chat.decode(row["completion_ids"], skip_special_tokens=True)


class Interrupt(Exception):
    pass


def test_interrupted_run_resumes_without_loss_or_duplicates(reference, model_and_tokenizer, tmp_path):
    model, tokenizer = model_and_tokenizer
    out = tmp_path / "run"
    calls = {"n": 0}

    def interrupt_after(limit):
        def hook(module, args, output):
            calls["n"] += 1
            if calls["n"] > limit:
                raise Interrupt

        return model.register_forward_hook(hook)

    # A full shard costs a fixed number of forward passes; interrupt in the middle of the third shard.
    handle = interrupt_after(10**9)
    generate_power_dataset(
        model, tokenizer, PROMPTS[:SHARD_SIZE], SIR, tmp_path / "probe", shard_size=SHARD_SIZE
    )
    handle.remove()
    per_shard, calls["n"] = calls["n"], 0
    handle = interrupt_after(2 * per_shard + per_shard // 2)
    with pytest.raises(Interrupt):
        generate_power_dataset(model, tokenizer, PROMPTS, SIR, out, shard_size=SHARD_SIZE)
    handle.remove()
    shards = sorted(p.name for p in (out / "shards").glob("shard-*.jsonl"))
    assert shards == ["shard-000000.jsonl", "shard-000001.jsonl"]  # the shard in progress was not written
    assert not (out / "dataset").exists()
    # a crash in the middle of writing leaves only a temporary file, which a resume ignores
    (out / "shards" / ".shard-000002.jsonl.999.tmp").write_text('{"truncated json')
    done = {p: p.stat().st_mtime_ns for p in (out / "shards").glob("shard-*.jsonl")}

    calls["n"] = 0
    handle = interrupt_after(10**9)
    resumed = generate_power_dataset(model, tokenizer, PROMPTS, SIR, out, shard_size=SHARD_SIZE)
    handle.remove()
    assert calls["n"] < 3 * per_shard  # only the two missing shards were sampled (the last one is smaller)
    assert all(p.stat().st_mtime_ns == t for p, t in done.items())  # finished shards untouched
    assert_same_rows(resumed, reference)
    keys = list(zip(resumed["prompt_index"], resumed["sample_index"], resumed["particle_index"]))
    assert len(set(keys)) == len(keys) == len(reference)

    # a rerun of a finished run samples nothing and returns the same rows
    calls["n"] = 0
    handle = interrupt_after(0)
    again = generate_power_dataset(model, tokenizer, PROMPTS, SIR, out, shard_size=SHARD_SIZE)
    handle.remove()
    assert_same_rows(again, reference)

    # the same directory with other settings is refused, unless overwrite=True
    other = replace(SIR, alpha=2.0)
    with pytest.raises(ValueError, match="other prompts, sampling settings"):
        generate_power_dataset(model, tokenizer, PROMPTS, other, out, shard_size=SHARD_SIZE)
    ds = generate_power_dataset(
        model, tokenizer, PROMPTS[:2], other, out, shard_size=SHARD_SIZE, overwrite=True
    )
    assert power_dataset_metadata(ds)["alpha"] == 2.0 and len(ds) == 2 * 8


def test_seed_none_is_recorded_and_reused_on_resume(model_and_tokenizer, tmp_path):
    model, tokenizer = model_and_tokenizer
    config = replace(SIR, seed=None)
    first = generate_power_dataset(model, tokenizer, PROMPTS[:4], config, tmp_path, shard_size=2)
    seed = power_dataset_metadata(first)["sampling_config"]["seed"]
    assert isinstance(seed, int)
    shutil.rmtree(tmp_path / "dataset")
    (tmp_path / "shards" / "shard-000001.jsonl").unlink()
    resumed = generate_power_dataset(model, tokenizer, PROMPTS[:4], config, tmp_path, shard_size=2)
    assert_same_rows(resumed, first)


@pytest.mark.multiprocess
def test_two_processes_give_the_rows_of_one(reference, model_and_tokenizer, model_dir, tmp_path):
    """`accelerate launch` with 2 CPU processes (gloo): a fresh run, a resume of an interrupted single-process run and
    an in-memory run all give the rows of the uninterrupted single-process run; both processes sample shards."""
    model, tokenizer = model_and_tokenizer
    settings = {"prompts": PROMPTS, "sampling": SIR.to_dict(), "shard_size": SHARD_SIZE}
    (tmp_path / "settings.json").write_text(json.dumps(settings))
    # the interrupted run to resume: shards 0 and 2 of 4 done
    partial = tmp_path / "partial"
    generate_power_dataset(model, tokenizer, PROMPTS, SIR, partial, shard_size=SHARD_SIZE)
    shutil.rmtree(partial / "dataset")
    for s in (1, 3):
        (partial / "shards" / f"shard-{s:06d}.jsonl").unlink()

    accelerate_launch(REPO / "tests" / "scripts" / "data_multiprocess.py", model_dir, tmp_path)
    reports = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in range(2)]
    assert {r["num_processes"] for r in reports} == {2}
    assert {r["distributed_type"] for r in reports} == {"DistributedType.MULTI_CPU"}
    # the work was split: each process sampled shards, none twice, and the resume sampled only the missing ones
    fresh = [s for r in reports for s in r["sampled"].get("fresh", [])]
    assert sorted(fresh) == [0, 1, 2, 3] and all(r["sampled"].get("fresh") for r in reports)
    assert sorted(s for r in reports for s in r["sampled"].get("partial", [])) == [1, 3]
    assert_same_rows(load_from_disk(str(tmp_path / "fresh" / "dataset")), reference)
    assert_same_rows(load_from_disk(str(tmp_path / "partial" / "dataset")), reference)
    for r in reports:  # every process returns the whole data set
        assert_same_rows(Dataset.from_list(r["memory_rows"]), reference.remove_columns("stats"))


def test_push_to_hub_goes_through_the_datasets_api(model_and_tokenizer, monkeypatch):
    """No Hub here: `Dataset.push_to_hub` and `HfApi.upload_file` are mocked; we check what they are given."""
    model, tokenizer = model_and_tokenizer
    pushed, uploaded = [], []
    monkeypatch.setattr(
        Dataset, "push_to_hub", lambda self, repo_id, **kw: pushed.append((self, repo_id, kw))
    )
    monkeypatch.setattr(
        "huggingface_hub.HfApi.upload_file", lambda self, **kw: uploaded.append(kw), raising=True
    )
    config = PowerSamplingConfig(method="temperature", max_new_tokens=2, seed=0)
    with pytest.raises(ValueError, match="hub_dataset_id"):
        generate_power_dataset(model, tokenizer, ["q"], config, push_to_hub=True)
    ds = generate_power_dataset(
        model,
        tokenizer,
        ["q", "q a"],
        config,
        push_to_hub=True,
        hub_dataset_id="me/teacher",
        hub_private=True,
    )
    ((dataset, repo_id, kwargs),) = pushed
    assert repo_id == "me/teacher" and kwargs["private"] is True and len(dataset) == len(ds) == 2
    ((upload,),) = [uploaded]
    assert upload["repo_id"] == "me/teacher" and upload["repo_type"] == "dataset"
    meta = json.loads(upload["path_or_fileobj"])["trl_power"]
    assert meta["hub_dataset_id"] == "me/teacher" and meta["sampling_config"]["method"] == "temperature"


def test_merged_particles_keep_every_prompts_weighted_distribution(model_and_tokenizer, tmp_path):
    """merge_particles=True: the same sampling (same seed) as one row per distinct (prompt, completion) whose weight
    is the sum of its particles' over the prompt's runs; no weight-0 row, fewer rows, and the weighted distribution
    of every prompt equal to the unmerged one's (to float rounding). Power: a merge within runs only leaves repeated
    (prompt, completion) pairs (asserted absent), one that kept a weight instead of summing changes the sums."""
    model, tokenizer = model_and_tokenizer
    config = replace(SIR, seed=0, finished_only=True, num_particles=8)
    rows = generate_power_dataset(model, tokenizer, PROMPTS[:4], config, shard_size=2)
    merged = generate_power_dataset(
        model, tokenizer, PROMPTS[:4], config, tmp_path / "merged", shard_size=2, merge_particles=True
    )

    def weights(ds):
        out: dict = {}
        for i, c, w in zip(ds["prompt_index"], ds["completion_ids"], ds["weight"]):
            out[(i, tuple(c))] = out.get((i, tuple(c)), 0.0) + w
        return {k: v for k, v in out.items() if v > 0}

    keys = list(zip(merged["prompt_index"], map(tuple, merged["completion_ids"])))
    assert len(set(keys)) == len(keys) < len(rows) and min(merged["weight"]) > 0
    assert weights(rows).keys() == weights(merged).keys()
    assert all(math.isclose(weights(rows)[k], v, rel_tol=1e-9) for k, v in weights(merged).items())
    assert power_dataset_metadata(merged)["merge_particles"] is True
    with pytest.raises(ValueError, match="other prompts, sampling settings"):  # the option decides the rows
        generate_power_dataset(model, tokenizer, PROMPTS[:4], config, tmp_path / "merged", shard_size=2)


class LocalHub:
    """A stand-in of the Hub on disk: a data set repository is the folder root/<repo id>. `Dataset.push_to_hub`
    writes the rows there as the Hub keeps them (parquet under data/: features and rows, no `info.description`),
    `HfApi.upload_file` writes a file, `hf_hub_download` reads one (EntryNotFoundError when absent), and
    `datasets.load_dataset(repo_id)` reads the folder with the real `load_dataset`."""

    def __init__(self, root: Path, monkeypatch: pytest.MonkeyPatch):
        import datasets
        import huggingface_hub
        from huggingface_hub.errors import EntryNotFoundError

        self.root, real_load = root, datasets.load_dataset

        def push(dataset, repo_id, **kwargs):
            (root / repo_id / "data").mkdir(parents=True, exist_ok=True)
            dataset.to_parquet(str(root / repo_id / "data" / "train-00000-of-00001.parquet"))

        def upload_file(api, *, path_or_fileobj, path_in_repo, repo_id, **kwargs):
            (root / repo_id / path_in_repo).write_bytes(path_or_fileobj)

        def download(repo_id, filename, **kwargs):
            path = root / repo_id / filename
            if not path.exists():
                raise EntryNotFoundError(f"{filename} not in {repo_id}")
            return str(path)

        monkeypatch.setattr(Dataset, "push_to_hub", push)
        monkeypatch.setattr(huggingface_hub.HfApi, "upload_file", upload_file)
        monkeypatch.setattr(huggingface_hub, "hf_hub_download", download)
        monkeypatch.setattr(
            datasets, "load_dataset", lambda path, *a, **kw: real_load(str(root / path), *a, **kw)
        )


def test_metadata_survives_the_hub_round_trip(model_and_tokenizer, model_dir, tmp_path, monkeypatch):
    """push_to_hub then load: `datasets.load_dataset` alone returns the rows without the metadata (asserted: this is
    what the round trip loses), `load_power_dataset` (and the recipes' loader) returns them with it, and the
    distillation trainer then checks alpha against it. Power: a loader that skipped `with_power_metadata` fails the
    equality of the metadata and the alpha check; one that restored another file's text fails the equality."""
    import datasets

    from trl_power import PowerDistillConfig, PowerDistillTrainer, load_power_dataset
    from trl_power.scripts.utils import PowerScriptArguments, load_data

    model, tokenizer = model_and_tokenizer
    LocalHub(tmp_path / "hub", monkeypatch)
    config = replace(SIR, seed=0)
    pushed = generate_power_dataset(
        model, tokenizer, PROMPTS[:2], config, push_to_hub=True, hub_dataset_id="me/teacher"
    )
    plain = datasets.load_dataset("me/teacher", split="train")
    assert len(plain) == len(pushed) and power_dataset_metadata(plain) is None
    loaded = load_power_dataset("me/teacher")
    assert power_dataset_metadata(loaded) == power_dataset_metadata(pushed)
    assert power_dataset_metadata(loaded)["hub_dataset_id"] == "me/teacher"
    assert loaded["completion_ids"] == pushed["completion_ids"] and loaded["weight"] == pushed["weight"]
    args = PowerScriptArguments(dataset_name="me/teacher")
    assert power_dataset_metadata(load_data(args, "train")) == power_dataset_metadata(pushed)

    train_args = PowerDistillConfig(str(tmp_path / "student"), alpha=2.0, use_cpu=True, report_to="none")
    with pytest.raises(ValueError, match="generated with alpha=3.0"):
        PowerDistillTrainer(model=model, args=train_args, train_dataset=loaded, processing_class=tokenizer)
    # the plain rows pass the alpha check (nothing to check against), with a warning that says how to load them
    from transformers import AutoModelForCausalLM, PreTrainedTokenizerFast

    fresh = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    with pytest.warns(UserWarning, match="load_power_dataset"):
        PowerDistillTrainer(
            model=fresh,
            args=train_args,
            train_dataset=plain,
            processing_class=PreTrainedTokenizerFast.from_pretrained(model_dir),
        )


def test_bad_input(model_and_tokenizer):
    model, tokenizer = model_and_tokenizer
    config = PowerSamplingConfig(method="temperature", max_new_tokens=2)
    with pytest.raises(ValueError, match="No prompts"):
        generate_power_dataset(model, tokenizer, [], config)
    with pytest.raises(ValueError, match="one format"):
        generate_power_dataset(model, tokenizer, ["q", [4]], config)
    with pytest.raises(ValueError, match="'prompt' column"):
        generate_power_dataset(model, tokenizer, Dataset.from_dict({"question": ["q"]}), config)
    with pytest.raises(ValueError, match="prompt-only"):
        generate_power_dataset(
            model, tokenizer, Dataset.from_dict({"prompt": ["q"], "completion": [" a"]}), config
        )
    with pytest.raises(TypeError, match="list of prompts"):
        generate_power_dataset(model, tokenizer, "q", config)
    with pytest.raises(ValueError, match="shard_size"):
        generate_power_dataset(model, tokenizer, ["q"], config, shard_size=0)
    with pytest.raises(ValueError, match="chat template"):
        generate_power_dataset(model, tokenizer, [[{"role": "user", "content": "q"}]], config)


def test_continuation_text_falls_back_when_the_prompt_does_not_decode_as_a_prefix():
    class Tok:
        def decode(self, ids, skip_special_tokens=False):
            return "|".join(map(str, ids)) if len(ids) > 1 else "X"

        def batch_decode(self, seqs, skip_special_tokens=False):
            return [self.decode(s) for s in seqs]

    assert continuation_texts(Tok(), [[1], [1]], [[2, 3], [4, 5]]) == ["2|3", "4|5"]
    assert continuation_texts(None, [[1]], [[2, 3]]) == ["2 3"]
