"""The suite catches wrong maths: each mutation below monkeypatches one piece of the library with a plausible wrong
variant and runs the check meant to catch it, which must then fail. The table of mutation -> catching test is
printed at the end of the run (conftest.py's terminal summary).

A check "catches" a mutation when it raises AssertionError with the mutation in place; every check also passes
without it (it is one of the suite's own tests, run as usual elsewhere).
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

import trl_power.diagnostic as diagnostic
import trl_power.sampling.mh as mh
import trl_power.sampling.sir as sir
import trl_power.sampling.smc as smc
from trl_power.trainers.distill_trainer import PowerDistillTrainer
from trl_power.trainers.self_reward_trainer import PowerSelfRewardTrainer

CAUGHT: dict[str, str] = {}


def assert_caught(mutation: str, check, *args) -> None:
    """Run `check(*args)` (a test function of the suite) and require it to fail; record the catch."""
    with pytest.raises(AssertionError):
        check(*args)
    params = [a for a in args if isinstance(a, str | int | float | bool)]
    CAUGHT[mutation] = f"{check.__module__}::{check.__name__}{params if params else ''}"


# ----- the samplers ---------------------------------------------------------------------------------------------------


def _mh_acceptance(variant: str):
    def wrong(
        alpha,
        cut,
        lp_new,
        lq_new,
        lp_old,
        lq_old,
        rule,
        new_in_target=True,
        old_in_target=True,
        log_cut_ratio=None,
    ):
        if not new_in_target:
            return -math.inf
        if not old_in_target:
            return math.inf
        a = alpha - 1 if variant == "alpha_minus_one" else alpha
        log_a = a * (sum(lp_new) - sum(lp_old))
        if variant != "no_proposal_correction":
            log_a += sum(lq_old) - sum(lq_new)
        if variant != "no_length_correction":
            log_a += math.log(cut + len(lp_old)) - math.log(cut + len(lp_new))
        return log_a

    return wrong


@pytest.mark.parametrize("variant", ["no_length_correction", "no_proposal_correction", "alpha_minus_one"])
def test_mh_acceptance_mutations(monkeypatch, random_model, variant):
    from test_sampling_exactness import test_mh_chain_has_the_law_of_the_exact_kernel as check

    monkeypatch.setattr(mh, "log_acceptance", _mh_acceptance(variant))
    assert_caught(f"MH acceptance: {variant}", check, random_model, False, 2.0, 0.5, 40)


@pytest.mark.parametrize("variant", ["alpha_minus_one", "no_proposal_correction"])
def test_sir_weight_mutations(monkeypatch, random_model, variant):
    from test_sampling_exactness import test_weighted_particles_are_unbiased as check

    def wrong(alpha, logp, logq, finished, finished_only):
        a = alpha - 1 if variant == "alpha_minus_one" else alpha
        logw = a * np.asarray(logp) - (0.0 if variant == "no_proposal_correction" else np.asarray(logq))
        return np.where(finished, logw, -np.inf) if finished_only else logw

    monkeypatch.setattr(sir, "importance_log_weights", wrong)
    assert_caught(f"SIR weight: {variant}", check, random_model, "sir", 0.5, False)


@pytest.mark.parametrize("variant", ["alpha_minus_one", "no_proposal_correction"])
def test_smc_increment_mutations(monkeypatch, random_model, variant):
    from test_sampling_exactness import test_weighted_particles_are_unbiased as check

    def wrong(logw, alpha_now, alpha_prev, logp_now, logp_prev, logq_new):
        shift = 1.0 if variant == "alpha_minus_one" else 0.0
        logq = 0.0 if variant == "no_proposal_correction" else logq_new
        return logw + (alpha_now - shift) * logp_now - (alpha_prev - shift) * logp_prev - logq

    monkeypatch.setattr(smc, "update_log_weights", wrong)
    assert_caught(f"SMC weight: {variant}", check, random_model, "smc", 1.0, False)


def test_smc_anneal_on_new_tokens_only(monkeypatch, random_model):
    """Annealing applied to each new token only (log w += alpha_t log p(y_t) - log q(y_t)): the prefix's exponent never
    moves from its old value, so neither the later targets nor the final p^alpha are reached."""
    from test_sampling_exactness import test_annealed_smc_particles_are_unbiased as check

    def wrong(logw, alpha_now, alpha_prev, logp_now, logp_prev, logq_new):
        return logw + alpha_now * (logp_now - logp_prev) - logq_new

    monkeypatch.setattr(smc, "update_log_weights", wrong)
    assert_caught("SMC anneal: new tokens only", check, random_model, False)


def test_mh_entropy_cut_without_its_correction(monkeypatch, trap_model):
    """Entropy-placed cuts with the uniform cuts' correction log(L/L') (the proposal's cut law ignored)."""
    from test_sampling_exactness import test_entropy_cut_mh_chain_has_the_law_of_the_exact_kernel as check

    right = mh.log_acceptance

    def wrong(*args, log_cut_ratio=None, **kwargs):
        return right(*args, log_cut_ratio=None, **kwargs)

    monkeypatch.setattr(mh, "log_acceptance", wrong)
    assert_caught("MH entropy cuts: uniform correction", check, trap_model)


def test_smc_finished_particles_keep_decoding(monkeypatch, random_model):
    """A particle that emitted EOS treated as live: it keeps drawing tokens and weights."""
    from test_sampling_exactness import test_weighted_particles_are_unbiased as check

    monkeypatch.setattr(smc, "still_decoding", lambda live, new_tokens, eos_ids: live)
    assert_caught(
        "SMC: finished particles keep decoding and weighting", check, random_model, "smc", 1.0, False
    )


def test_smc_no_weight_reset(monkeypatch, random_model):
    from test_sampling_exactness import test_weighted_particles_are_unbiased as check

    monkeypatch.setattr(smc, "resampled_log_weights", lambda logw_alive, ancestors: logw_alive[ancestors])
    assert_caught("SMC: no weight reset after resampling", check, random_model, "smc", 1.0, False)


def test_cut_particles_kept_in_the_finished_target(monkeypatch, random_model):
    from test_sampling_exactness import test_weighted_particles_are_unbiased as check

    monkeypatch.setattr(smc, "final_log_weights", lambda logw, finished, finished_only: logw)
    assert_caught("SMC: cut particles weighted under finished_only", check, random_model, "smc", 1.0, True)


# ----- the trainers ---------------------------------------------------------------------------------------------------


def test_self_reward_per_token_mean_kl(monkeypatch, tmp_path):
    """RLOO's KL penalty (to the power target) averaged over the completion tokens instead of summed."""
    from test_self_reward import save_reference
    from test_self_reward import test_training_reaches_the_power_distribution as check

    original = PowerSelfRewardTrainer._get_per_token_logps_and_entropies

    def per_token_mean(self, model, input_ids, attention_mask, logits_to_keep, *args, **kwargs):
        out = original(self, model, input_ids, attention_mask, logits_to_keep, *args, **kwargs)
        capture = self._reference_capture
        if capture is None or torch.is_grad_enabled() or len(capture) != 2:
            return out
        old, target = capture[0][1], out[0]
        mask = attention_mask[:, -logits_to_keep:].float()
        lengths = mask.sum(1, keepdim=True).clamp(min=1)
        # sum_t (old - target') = sum_t (old - target) / T
        return (old - (old - target) / lengths, *out[1:])

    monkeypatch.setattr(PowerSelfRewardTrainer, "_get_per_token_logps_and_entropies", per_token_mean)
    reference = save_reference(tmp_path / "reference")
    assert_caught("self-reward: per-token-mean KL", check, tmp_path / "run", reference, 2.0, False)


def test_distill_batch_dependent_divisor(monkeypatch, tmp_path):
    from test_distill import test_small_batches_converge_to_the_weighted_empirical_distribution as check

    original = PowerDistillTrainer._get_num_items_in_batch

    def per_batch(self, batch_samples, device):
        self.args.loss_normalizer = "batch_tokens"
        return original(self, batch_samples, device)

    monkeypatch.setattr(PowerDistillTrainer, "_get_num_items_in_batch", per_batch)
    assert_caught("distillation: batch-dependent divisor", check, tmp_path, 8, 300)


def test_distill_weights_ignored(monkeypatch, tmp_path):
    from test_distill import test_small_batches_converge_to_the_weighted_empirical_distribution as check

    original = PowerDistillTrainer.compute_loss

    def unweighted(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        if "weight" in inputs:
            inputs = {**inputs, "weight": torch.ones_like(inputs["weight"])}
        return original(self, model, inputs, return_outputs, num_items_in_batch)

    monkeypatch.setattr(PowerDistillTrainer, "compute_loss", unweighted)
    monkeypatch.setattr(PowerDistillTrainer, "_loss_tokens_and_weights", _unit_weights)
    assert_caught("distillation: weights ignored", check, tmp_path, 8, 300)


def _unit_weights(self, batch, training):
    tokens = (batch["labels"][:, 1:] != -100).sum(1).float()
    return tokens, torch.ones_like(tokens)


# ----- the covariance diagnostic ---------------------------------------------------------------------------------------


def test_diagnostic_two_stage_bootstrap(monkeypatch):
    """The former interval: resample prompts, then samples within them (within-prompt noise counted twice)."""
    from test_evaluation import test_bootstrap_intervals_cover_at_their_level as check

    original = diagnostic.covariance_diagnostic

    def two_stage(
        rewards, base_logprobs, alpha, num_points=65, bootstrap=200, seed=0, resample="samples", **kw
    ):
        diag = original(rewards, base_logprobs, alpha, num_points=num_points, bootstrap=0, seed=seed, **kw)
        r, lp = np.asarray(rewards, dtype=float), np.asarray(base_logprobs, dtype=float)
        rng = np.random.default_rng(seed)
        P, n = r.shape
        gains = []
        for _ in range(bootstrap):
            pi = rng.integers(0, P, P)
            sj = rng.integers(0, n, (P, n))
            rb, lb = np.take_along_axis(r[pi], sj, 1), np.take_along_axis(lp[pi], sj, 1)
            gains.append(diagnostic._prompt_gains(rb, lb, np.ones_like(rb), alpha).mean())
        diag.gain_ci = tuple(np.quantile(gains, [0.05, 0.95]))
        return diag

    import test_evaluation

    monkeypatch.setattr(test_evaluation, "covariance_diagnostic", two_stage)
    assert_caught("diagnostic: two-stage bootstrap", check, "samples")


def test_diagnostic_trapezoid_gain(monkeypatch):
    from test_evaluation import test_predicted_gain_is_the_integral_of_the_curve_in_closed_form as check

    original = diagnostic.covariance_diagnostic

    def trapezoid(*args, **kwargs):
        diag = original(*args, **kwargs)
        diag.predicted_gain = float(np.trapezoid(diag.covariance, diag.s))
        return diag

    import test_evaluation

    monkeypatch.setattr(test_evaluation, "covariance_diagnostic", trapezoid)
    assert_caught("diagnostic: gain by a 65-point trapezoid", check)
