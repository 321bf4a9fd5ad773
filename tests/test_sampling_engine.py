"""The fast MH equals a straightforward no-cache MH for the same seed; batching changes nothing; seeds
repeat; bad input fails clearly."""

from __future__ import annotations

import math
import warnings

import numpy as np
import pytest
import torch

from trl_power import PowerSampler, PowerSamplingConfig
from trl_power.sampling.transformers_engine import proposal_logprobs, sample_from_logprobs
from trl_power.seeding import chain_generator
from trl_power.tiny_models import build_model, build_tokenizer

EOS = 0


def _next_logits(model, seq):
    """Full forward of the whole sequence (no cache, batch 1): the logits after its last token."""
    with torch.no_grad():
        return model(input_ids=torch.tensor([seq])).logits[0, -1].float()


def _extend(model, seq, n, gen, tau, eos=EOS):
    """Sample up to n tokens (stop at EOS) re-reading the whole sequence for each token."""
    toks, lps, lqs = [], [], []
    for _ in range(n):
        logits = _next_logits(model, seq + toks)
        logq = proposal_logprobs(logits[None], tau)[0]
        u = torch.rand(1, generator=gen, dtype=torch.float64)
        t = int(sample_from_logprobs(logq[None], u)[0][0])
        toks.append(t)
        lps.append(float(torch.log_softmax(logits, -1)[t]))
        lqs.append(float(logq[t]))
        if t == eos:
            break
    return toks, lps, lqs


def reference_mh(model, prompt, cfg: PowerSamplingConfig, gen):
    """Karan & Du's MH written plainly: one chain, every token re-reads its whole prefix; the three suffix
    rules and the finished-only target of the last block as docs/sampling.md states them."""
    tau, rule = cfg.proposal_tau, cfg.mh_suffix_rule
    gen_toks, lps, lqs = [], [], []
    block = cfg.mh_block_size
    for k in range(math.ceil(cfg.max_new_tokens / block)):
        horizon = min((k + 1) * block, cfg.max_new_tokens)
        t, p, q = _extend(model, prompt + gen_toks, horizon - len(gen_toks), gen, tau)
        gen_toks, lps, lqs = gen_toks + t, lps + p, lqs + q
        for _ in range(cfg.mcmc_steps):
            L = len(gen_toks)
            i = min(int(float(torch.rand(1, generator=gen, dtype=torch.float64)) * L), L - 1)
            target = (horizon if rule == "horizon" else L) - i
            t, p, q = _extend(model, prompt + gen_toks[:i], target, gen, tau)
            cur_p, cur_q = lps[i:], lqs[i:]
            if rule == "current_length":  # the released code: the current answer over [i, L') only
                cur_p, cur_q = cur_p[: len(p)], cur_q[: len(q)]
            log_a = cfg.alpha * (sum(p) - sum(cur_p)) + (sum(cur_q) - sum(q))
            if rule == "horizon":
                log_a += math.log(L) - math.log(i + len(t))
            if cfg.finished_only and horizon == cfg.max_new_tokens:
                if t[-1] != EOS:
                    log_a = -math.inf
                elif gen_toks[-1] != EOS:
                    log_a = math.inf
            u = float(torch.rand(1, generator=gen, dtype=torch.float64))
            if math.log(u) < log_a:
                gen_toks, lps, lqs = gen_toks[:i] + t, lps[:i] + p, lqs[:i] + q
        if gen_toks[-1] == EOS or len(gen_toks) >= cfg.max_new_tokens:
            break
    return gen_toks, sum(lps)


PROMPTS = [[4], [4, 1, 2], [3, 5, 7, 4], [9, 9]]


@pytest.mark.parametrize("finished_only", [True, False])
@pytest.mark.parametrize("rule", ["horizon", "current_length", "current_length_full"])
def test_cached_mh_equals_no_cache_reference(wide_model, rule, finished_only):
    cfg = PowerSamplingConfig(
        method="mh",
        alpha=3.0,
        max_new_tokens=12,
        block_size=4,
        mcmc_steps=3,
        mh_suffix_rule=rule,
        finished_only=finished_only,
        proposal_temperature=1.0,  # proposals often stop early (EOS), where the three rules differ
        num_samples_per_prompt=2,
        batch_size=8,
        seed=1,
    )
    out = PowerSampler(wide_model, None, cfg).sample(PROMPTS)
    k = 0
    for i, prompt in enumerate(PROMPTS):
        for j in range(2):
            ids, lp = reference_mh(wide_model, prompt, cfg, chain_generator(1, i, j))
            assert out.completion_ids[k] == ids, (i, j)
            assert out.base_logprobs[k] == pytest.approx(lp, abs=1e-4)
            k += 1
    assert 0 < out.stats["acceptance_rate"] < 1


def test_the_suffix_rules_and_targets_give_different_chains(wide_model):
    """The equality test above can tell the rules apart: with its settings each rule, and each target, gives
    other chains than the others."""
    cfg = dict(
        method="mh", alpha=3.0, max_new_tokens=12, block_size=4, mcmc_steps=3, proposal_temperature=1.0
    )
    cfg.update(num_samples_per_prompt=2, batch_size=8, seed=1)
    chains = {
        (rule, fo): PowerSampler(
            wide_model, None, PowerSamplingConfig(mh_suffix_rule=rule, finished_only=fo, **cfg)
        )
        .sample(PROMPTS)
        .completion_ids
        for rule in ("horizon", "current_length", "current_length_full")
        for fo in (True, False)
    }
    assert len({str(c) for c in chains.values()}) == len(chains)


@pytest.mark.parametrize(
    "method, extra",
    [
        ("temperature", {}),
        ("low_temperature", {}),
        ("mh", {}),
        ("mh", {"mh_cut": "entropy"}),
        ("smc", {}),
        ("smc", {"anneal_tokens": 6, "resample_interval": 3}),
        ("sir", {}),
        ("lookahead", {"lookahead_candidates": 3, "lookahead_rollouts": 2, "lookahead_horizon": 4}),
    ],
)
def test_batched_equals_one_at_a_time(wide_model, method, extra):
    """Each run draws from its own stream: a whole batch at once gives what one run at a time gives."""
    kwargs = dict(method=method, alpha=2.0, max_new_tokens=10, block_size=5, mcmc_steps=2, num_particles=4)
    kwargs.update(num_samples_per_prompt=2, seed=3, **extra)
    batched = PowerSampler(wide_model, None, PowerSamplingConfig(batch_size=1024, **kwargs)).sample(PROMPTS)
    single = PowerSampler(wide_model, None, PowerSamplingConfig(batch_size=1, **kwargs)).sample(PROMPTS)
    assert batched.completion_ids == single.completion_ids
    assert batched.prompt_indices == single.prompt_indices == [0, 0, 1, 1, 2, 2, 3, 3]
    torch.testing.assert_close(torch.tensor(batched.base_logprobs), torch.tensor(single.base_logprobs))


def test_seeds_repeat_and_differ(wide_model):
    def run(seed):
        cfg = PowerSamplingConfig(method="smc", alpha=2.0, max_new_tokens=8, num_particles=4, seed=seed)
        return PowerSampler(wide_model, None, cfg).sample(PROMPTS).completion_ids

    assert run(1) == run(1)
    assert run(1) != run(2)


def test_base_logprobs_match_scoring(wide_model):
    from trl_power.scoring import sequence_logprobs

    cfg = PowerSamplingConfig(method="mh", alpha=2.0, max_new_tokens=8, block_size=4, mcmc_steps=2)
    out = PowerSampler(wide_model, None, cfg).sample(PROMPTS)
    scored = sequence_logprobs(wide_model, PROMPTS, out.completion_ids)
    torch.testing.assert_close(torch.tensor(out.base_logprobs), scored, atol=1e-4, rtol=1e-4)


def test_stats_count_tokens_honestly(wide_model):
    cfg = PowerSamplingConfig(method="temperature", max_new_tokens=6)
    out = PowerSampler(wide_model, None, cfg).sample(PROMPTS)
    # prefill: every prompt token but the last; decode: one feed per generated token (the first feeds the
    # prompt's last token, the last generated token is never fed)
    assert out.stats["prefill_tokens"] == sum(len(p) - 1 for p in PROMPTS)
    assert out.stats["decode_tokens"] == sum(len(c) for c in out.completion_ids)
    assert out.stats["seconds"] > 0


def test_text_prompts_and_tokenizer_without_pad(random_model):
    tok = build_tokenizer(["a", "b", "c", "q"], with_pad=False)
    assert tok.pad_token is None
    out = PowerSampler(random_model, tok, PowerSamplingConfig(method="smc", max_new_tokens=3)).sample(
        ["q", "a b q"]
    )
    assert tok.pad_token_id is not None  # EOS was given the pad role
    assert len(out.completions) == 2 and all(isinstance(c, str) for c in out.completions)


def test_model_mode_is_restored(random_model):
    random_model.train()
    try:
        PowerSampler(random_model, None, PowerSamplingConfig(method="mh", max_new_tokens=2)).sample([[4]])
        assert random_model.training
    finally:
        random_model.eval()


def test_peft_model_samples(random_model):
    import copy

    from peft import LoraConfig, get_peft_model

    peft = get_peft_model(copy.deepcopy(random_model), LoraConfig(r=2, target_modules=["q_proj"]))
    out = PowerSampler(peft, None, PowerSamplingConfig(method="smc", max_new_tokens=3)).sample([[4], [4, 1]])
    assert len(out) == 2


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(alpha=0.0), "alpha"),
        (dict(alpha=-1.0), "alpha"),
        (dict(alpha=float("nan")), "alpha"),
        (dict(max_new_tokens=0), "max_new_tokens"),
        (dict(method="beam"), "method"),
        (dict(ess_threshold=2.0), "ess_threshold"),
        (dict(proposal_temperature=0.0), "proposal_temperature"),
    ],
)
def test_bad_config(kwargs, match):
    with pytest.raises(ValueError, match=match):
        PowerSamplingConfig(**kwargs)


def test_bad_prompts(random_model, tokenizer):
    sampler = PowerSampler(random_model, tokenizer, PowerSamplingConfig(max_new_tokens=2))
    with pytest.raises(ValueError, match="non-empty"):
        sampler.sample([])
    with pytest.raises(ValueError, match="empty"):
        sampler.sample([[]])
    with pytest.raises(ValueError, match="context"):
        sampler.sample([[1] * 63])  # 63 + 2 > 64 positions


def test_exact_refuses_large_models(wide_model):
    cfg = PowerSamplingConfig(method="exact", max_new_tokens=8, exact_max_sequences=1000)
    with pytest.raises(ValueError, match="tiny models"):
        PowerSampler(wide_model, None, cfg).sample([[4]])


def test_nan_logits_raise():
    model = build_model(5, seed=0)
    with torch.no_grad():
        model.lm_head.weight.fill_(float("nan"))
    with pytest.raises(FloatingPointError, match="NaN"):
        PowerSampler(model, None, PowerSamplingConfig(method="mh", max_new_tokens=2)).sample([[4]])


@pytest.mark.parametrize("vocab, block", [(5, 2), (1000, 64), (1024, 1024), (3001, 128)])
def test_two_level_inverse_cdf_draws_the_one_level_tokens(vocab, block):
    """The engine's draw (block sums, then the token inside the block) is the plain float64 inverse CDF, token for
    token (rows split in chunks of 300 too), including vocabularies that are not a multiple of the block and truncated proposals (-inf entries).
    Power: an off-by-one block offset or a missing pad moves most draws."""
    gen = torch.Generator().manual_seed(vocab)
    logits = torch.randn(2000, vocab, generator=gen) * 3
    logq = proposal_logprobs(logits, 0.7, top_k=max(1, vocab // 3))
    u = torch.rand(2000, generator=gen, dtype=torch.float64)
    cdf = logq.double().exp().cumsum(-1)
    one_level = (
        torch.searchsorted(cdf, (u * cdf[:, -1])[:, None], right=True).squeeze(-1).clamp(max=vocab - 1)
    )
    assert torch.equal(sample_from_logprobs(logq, u, block=block)[0], one_level)
    assert torch.equal(sample_from_logprobs(logq, u, block=block, rows_per_chunk=300)[0], one_level)


def _one_level_draw(logq: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
    """The reference: the first v with CDF(v) > u * CDF(V), one float64 cumulative sum over the row."""
    cdf = logq.double().exp().cumsum(-1)
    return torch.searchsorted(cdf, (u * cdf[:, -1])[:, None], right=True).squeeze(-1)


def test_two_level_draw_is_the_float64_draw_on_a_262k_vocabulary():
    """On Gemma's vocabulary size (262,144 tokens, logits spread like a real head's), the two-level draw is the float64
    one-level draw token for token: for uniform targets, and for targets placed just inside a token's CDF interval
    (1e-12 to 1e-9 past its lower edge, far above float64 rounding, within float32's). Power: the previous draw took
    exp in float32, which moves every CDF edge by up to ~1e-9 and draws the neighbouring token for about half of
    the edge targets (and for 1.5e-5 to 1.6e-4 of uniform draws); the assertion on `exp_in_float32` shows it here."""
    V, B = 262_144, 128
    gen = torch.Generator().manual_seed(0)
    logq = torch.log_softmax(torch.randn(B, V, generator=gen) * 3, -1)
    u = torch.rand(B, generator=gen, dtype=torch.float64)
    assert torch.equal(sample_from_logprobs(logq, u)[0], _one_level_draw(logq, u))

    p = logq.double().exp()
    cdf, total = p.cumsum(-1), p.sum(-1)
    v = torch.multinomial(p, 1, generator=gen).squeeze(1).clamp(min=1)  # tokens with some mass
    offset = 10 ** (-12 + 3 * torch.rand(B, generator=gen, dtype=torch.float64))
    offset = torch.minimum(offset, 0.5 * p.gather(1, v[:, None]).squeeze(1))
    edge = (cdf.gather(1, (v - 1)[:, None]).squeeze(1) + offset) / cdf[:, -1]
    reference = _one_level_draw(logq, edge)
    assert torch.equal(reference, v)
    assert torch.equal(sample_from_logprobs(logq, edge)[0], reference)
    exp_in_float32 = _one_level_draw(logq.float().exp().double().log(), edge)
    assert (exp_in_float32 != reference).sum() > B // 10
    assert total.min() > 0


def test_a_target_past_the_in_block_total_takes_a_token_of_positive_probability():
    """A block's total (a pairwise float64 sum) can exceed the last value of its cumulative sum by rounding: here
    1 + 199 x 1e-16 sums to 1 + 2e-14 but accumulates to 1. A target between the two used to run past the block and
    clamp to its last slot, a zero-probability token (log q = -inf). Now it takes the last token of positive mass."""
    logq = torch.full((1, 1024), -math.inf, dtype=torch.float64)
    logq[0, 0] = 0.0
    logq[0, 1:200] = math.log(1e-16)
    p = logq.exp()
    assert p.sum() > p.cumsum(-1)[0, -1]  # the rounding this is about
    u = torch.tensor([1 - 2**-53], dtype=torch.float64)
    token = int(sample_from_logprobs(logq, u)[0][0])
    assert token == 199 and math.isfinite(float(logq[0, token]))


def test_log_probs_of_a_draw_are_normalised_on_a_262k_vocabulary():
    """On a 262,144-token vocabulary, the log p and log q a sampler records for its drawn tokens are the exactly
    normalised ones: the mean per-token difference from teacher-forced scoring (TRL's selective_log_softmax, exact
    to ~1e-7) is below 3e-6 for plain sampling and for a temperature-0.5 proposal, and log q - log Z of the draw is
    the float64 log-probability. Power: torch's float32 log_softmax on CPU sums to 1 + ~2e-5 on such rows (every row
    alike), which the samplers used to record, so every token's log p and log q sat ~2e-5 high and an importance
    weight p^alpha / q gained (alpha - 1) x 2e-5 nats per token (a tilt toward longer answers); with this model's
    logits the uncorrected records are 7.2e-6 per token off, the corrected ones 2.7e-7."""
    from trl_power.scoring import completion_token_logprobs

    V = 262_144
    gen = torch.Generator().manual_seed(1)
    logits = torch.randn(64, V, generator=gen) * 4
    exact = logits.double() - torch.logsumexp(logits.double(), -1, keepdim=True)
    assert (
        torch.logsumexp(torch.log_softmax(logits, -1).double(), -1)
    ).mean() > 1e-5  # the offset, where it exists
    u = torch.rand(64, generator=gen, dtype=torch.float64)
    logq = torch.log_softmax(logits, -1)
    token, log_z = sample_from_logprobs(logq, u)
    recorded = logq.gather(1, token[:, None]).squeeze(1).double() - log_z
    assert abs(float((recorded - exact.gather(1, token[:, None]).squeeze(1)).mean())) < 3e-6

    model = build_model(V, seed=0, hidden_size=8, num_layers=1, num_heads=2, initializer_range=1.0)
    for temperature in (1.0, 0.5):
        cfg = PowerSamplingConfig(
            method="plain",
            max_new_tokens=8,
            proposal_temperature=temperature,
            num_samples_per_prompt=8,
            seed=0,
        )
        out = PowerSampler(model, None, cfg).sample([[5, 6]])
        lp, mask = completion_token_logprobs(model, [[5, 6]] * len(out), out.completion_ids)
        scored = (lp * mask).sum(-1).double()
        recorded = torch.as_tensor(out.base_logprobs, dtype=torch.float64)
        per_token = float((recorded - scored).sum() / mask.sum())
        assert abs(per_token) < 3e-6, (temperature, per_token)


@pytest.mark.parametrize("method", ["sir", "smc"])
def test_runs_whose_weight_sits_on_one_particle_are_counted_and_warned(method):
    """stats["final_ess"] is the mean ESS of each run's final weights and stats["degenerate_runs"] counts the runs
    below 2 (one particle's answer, reweighted); when that is most runs, a warning names the settings to change.
    At alpha 16, proposal temperature 1, 16 particles over 8 new tokens: 6 of 8 runs (final ESS 1.25 on average);
    at alpha 2 with temperature 0.5 (near 1/alpha): 3 of 8, no warning. Power: SMC's `mean_ess` (the ESS at its
    resampling checks) reads 6.1 on the degenerate runs, so nothing reported them before."""
    from trl_power.theory import effective_sample_size

    model = build_model(5, seed=3, initializer_range=0.25)
    common = dict(
        method=method,
        max_new_tokens=8,
        num_particles=16,
        num_samples_per_prompt=8,
        return_all_particles=True,
        finished_only=False,
        seed=0,
    )
    with pytest.warns(UserWarning, match="one particle carries almost all the final weight.*num_particles"):
        out = PowerSampler(
            model, None, PowerSamplingConfig(alpha=16.0, proposal_temperature=1.0, **common)
        ).sample([[4]])
    ess = [effective_sample_size(run) for run in np.asarray(out.weights).reshape(8, 16)]
    assert out.stats["degenerate_runs"] == sum(0 < e < 2 for e in ess) == 6
    assert out.stats["final_ess"] == pytest.approx(np.mean(ess))
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)
        healthy = PowerSampler(
            model, None, PowerSamplingConfig(alpha=2.0, proposal_temperature=0.5, **common)
        ).sample([[4]])
    assert healthy.stats["degenerate_runs"] <= 4


def test_mh_that_accepts_nothing_says_so(monkeypatch):
    """An MH run that accepted under 1% of at least 20 proposals warns, naming mcmc_steps and block_size; a run that
    accepts half of them does not. The acceptance is forced to 0 here (every log acceptance -inf): the warning's
    wiring, on the sampler's real statistics."""
    import trl_power.sampling.mh as mh

    model = build_model(5, seed=3, initializer_range=0.25)
    cfg = PowerSamplingConfig(
        method="mh", alpha=4.0, max_new_tokens=8, mcmc_steps=10, num_samples_per_prompt=8
    )
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)
        out = PowerSampler(model, None, cfg).sample([[4]])
    assert out.stats["acceptance_rate"] > 0.3
    monkeypatch.setattr(mh, "log_acceptance", lambda *args, **kwargs: -math.inf)
    with pytest.warns(UserWarning, match="0.0% of .* proposals accepted.*mcmc_steps.*block_size"):
        out = PowerSampler(model, None, cfg).sample([[4]])
    assert out.stats["acceptance_rate"] == 0.0
