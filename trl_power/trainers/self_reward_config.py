"""`PowerSelfRewardConfig`: TRL's `RLOOConfig` with the power target's settings (alpha or beta, the self-reward weight,
the finished-only target), and the checks of what would move the optimum away from p_ref^alpha
(`optimum_warnings`). The trainer is `trl_power.trainers.self_reward_trainer`."""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass, field

from trl import RLOOConfig

from trl_power.theory import alpha_to_beta, beta_to_alpha
from trl_power.trainers.utils import default_to_float32_without_bf16

DEFAULT_ALPHA = 4.0

# Keys of `generation_kwargs` that change the sampling distribution away from pi (see `optimum_warnings`).
_SAMPLER_CHANGING_KEYS = (
    "temperature",
    "top_p",
    "top_k",
    "min_p",
    "typical_p",
    "epsilon_cutoff",
    "eta_cutoff",
    "repetition_penalty",
    "no_repeat_ngram_size",
    "do_sample",
    "num_beams",
    "suppress_tokens",
    "begin_suppress_tokens",
    "bad_words_ids",
    "min_new_tokens",
    "min_length",
    "presence_penalty",
    "frequency_penalty",
    "min_tokens",
)


def resolve_alpha_beta(alpha: float | None, beta: float | None) -> tuple[float, float]:
    """(alpha, beta) with beta = 1 / (alpha - 1); alpha defaults to 4.0 when neither is given.

    Raises `ValueError` for alpha <= 1, beta <= 0, non-finite values, or both given and inconsistent.
    """
    if alpha is not None and (not math.isfinite(alpha) or alpha <= 1):
        raise ValueError(
            f"PowerSelfRewardConfig: alpha must be a finite number > 1 (the target is p_ref^alpha and "
            f"beta = 1/(alpha - 1) must be positive), got alpha={alpha}."
        )
    if beta is not None and (not math.isfinite(beta) or beta <= 0):
        raise ValueError(
            f"PowerSelfRewardConfig: beta must be a finite number > 0 (the KL coefficient; alpha = 1 + 1/beta), "
            f"got beta={beta}. beta=0 would drop the KL term and the optimum would no longer be p_ref^alpha: for "
            "reward maximisation without a KL term use trl.RLOOTrainer(beta=0); for a sharper target, a larger alpha."
        )
    if alpha is None and beta is None:
        alpha = DEFAULT_ALPHA
    if alpha is not None and beta is not None:
        if not math.isclose(beta, alpha_to_beta(alpha), rel_tol=1e-6, abs_tol=1e-12):
            raise ValueError(
                f"PowerSelfRewardConfig: alpha={alpha} and beta={beta} are inconsistent: alpha sets "
                f"beta = 1/(alpha - 1) = {alpha_to_beta(alpha):.6g}. Give only one of them."
            )
        return float(alpha), float(beta)
    if alpha is not None:
        return float(alpha), alpha_to_beta(alpha)
    return beta_to_alpha(beta), float(beta)


@dataclass
class PowerSelfRewardConfig(RLOOConfig):
    r"""
    Configuration class for the [`PowerSelfRewardTrainer`].

    Only the parameters specific to power self-reward training, and the RLOO parameters whose defaults or meaning
    change here, are listed. For all other parameters (generation, vLLM, logging, ...), see [`~trl.RLOOConfig`] and
    [`~transformers.TrainingArguments`]; they pass through unchanged.

    The target is p_alpha(y|x) ∝ p_ref(y|x)^alpha. With true rewards r_i the optimum is

        pi*(y|x) ∝ p_ref(y|x)^(1 + self_reward_weight / beta) * exp(sum_i w_i r_i(x, y) / beta),

    so the exponent the settings imply is `implied_alpha = 1 + self_reward_weight / beta` (= `alpha` for the default
    `self_reward_weight=1`).

    Parameters:
        > Parameters that set the target

        alpha (`float`, *optional*):
            Exponent of the target distribution p_ref^alpha; must be > 1. Sets `beta = 1 / (alpha - 1)`. Defaults to
            `4.0` when `beta` is not given either (i.e. beta = 1/3). After construction both `alpha` and `beta` hold
            numbers.
        beta (`float`, *optional*):
            KL coefficient of the objective E_pi[r] - beta * KL(pi || p_ref); must be > 0. May be given instead of
            `alpha` (then `alpha = 1 + 1/beta`). Giving both is allowed only if they agree. Unlike RLOO, `beta=0` is
            refused: without the KL term the optimum is a point mass, not p_ref^alpha (for reward maximisation without
            a KL term use `trl.RLOOTrainer` with `beta=0`; for a sharper target, a larger `alpha`).
        self_reward_weight (`float`, *optional*, defaults to `1.0`):
            Weight w of the self-reward in the total reward `w * log p_ref(y|x) + sum_i w_i * r_i(x, y)`; must be
            >= 0. With `w=0` and true reward functions this is plain KL-regularised RL towards p_ref.
        reward_weights (`list[float]`, *optional*):
            As in RLOO: weights w_i of the reward functions passed as `reward_funcs` (the self-reward is weighted by
            `self_reward_weight`, not here). If `None`, every reward has weight `1.0`.
        finished_only (`bool`, *optional*, defaults to `False`):
            Target p_ref^alpha over finished completions only (those that end with EOS within
            `max_completion_length`). A cut completion then gets the reward -beta * `cut_log_penalty`, so the optimum
            is p_ref^alpha * exp(-cut_log_penalty * 1{cut}), within a factor exp(-cut_log_penalty) of the
            finished-only target. `False` (as RLOO trains on cut completions): the power of p_ref truncated at
            `max_completion_length`, where a cut completion counts with the probability of its prefix.
        cut_log_penalty (`float`, *optional*, defaults to `20.0`):
            With `finished_only`: the log-factor by which the optimum down-weights a cut completion (reward penalty
            beta * cut_log_penalty).
        stop_strings (`list[str]`, *optional*):
            A completion also ends at the first token whose text contains one of these (kept, and finished like an
            EOS-ended one: `trl_power.modeling.stop_token_ids`), as `PowerSamplingConfig.stop_strings`: the target is
            then p_ref^alpha over answers that end there (a base model answering few-shot prompts goes on with the
            next example; `["\n"]` ends its answer at the newline). Both generation backends stop there.

        > Parameters whose defaults differ from [`~trl.RLOOConfig`]

        disable_dropout (`bool`, *optional*, defaults to `True`):
            Whether to disable dropout in the model. On by default here: the self-reward is log p_ref, and a
            dropout-noised log p_ref is a biased estimate of it (E[log p_drop] != log p), which would move the
            optimum.
        bf16 (`bool`, *optional*):
            As in TRL (defaults to `True` unless `fp16` is set), except on a machine with no bf16-capable
            accelerator and `use_cpu=False`, where it defaults to `False` instead of making transformers refuse the
            config: the default config then works on CPU.

    Settings of the parent that move the optimum away from p_ref^alpha are accepted but warned about at
    construction (see [`PowerSelfRewardConfig.optimum_warnings`]): `normalize_advantages=True`, off-policy reuse (`num_iterations > 1` or `steps_per_generation >
    gradient_accumulation_steps`, where the PPO clipping `epsilon` becomes active), a sampler that differs from pi
    (`temperature != 1`, `top_p < 1`, `top_k > 0`, `min_p`, `repetition_penalty != 1`, sampler-changing
    `generation_kwargs`, `vllm_structured_outputs_regex`), `mask_truncated_completions=True`,
    `sync_ref_model=True` and `disable_dropout=False`. The parent's defaults are already right: sequence-level
    reward and KL (no per-token mean), leave-one-out baseline, no std scaling, no length normalisation.
    `reward_clip_range` clips the user's rewards only, as in RLOO (the self-reward is not clipped).
    """

    alpha: float | None = field(
        default=None,
        metadata={
            "help": "Exponent of the target p_ref^alpha (> 1); sets beta = 1/(alpha - 1). Defaults to 4.0 when beta "
            "is not given either."
        },
    )
    beta: float | None = field(
        default=None,
        metadata={
            "help": "KL coefficient (> 0); may be given instead of alpha (alpha = 1 + 1/beta). Both given must agree."
        },
    )
    self_reward_weight: float = field(
        default=1.0,
        metadata={
            "help": "Weight of the self-reward log p_ref(y|x) in the total reward (>= 0). 0 gives plain "
            "KL-regularised RL on the true rewards."
        },
    )
    reward_weights: list[float] | None = field(
        default=None,
        metadata={
            "help": "Weights of the true reward functions (not of the self-reward, see self_reward_weight). If None, "
            "all true rewards have weight 1.0."
        },
    )
    finished_only: bool = field(
        default=False,
        metadata={
            "help": "Target p_ref^alpha over finished completions only (cut ones get reward -beta * cut_log_penalty). "
            "False: the power of p_ref truncated at max_completion_length, as RLOO trains on cut completions."
        },
    )
    cut_log_penalty: float = field(
        default=20.0,
        metadata={
            "help": "With finished_only: log-factor by which the optimum down-weights a cut completion."
        },
    )
    stop_strings: list[str] | None = field(
        default=None,
        metadata={
            "help": "A completion also ends (finished) at the first token whose text contains one of these, e.g. "
            '["\\n"] for few-shot answers of a base model.'
        },
    )
    disable_dropout: bool = field(
        default=True,
        metadata={
            "help": "Whether to disable dropout in the model. On by default: a dropout-noised log p_ref is a biased "
            "self-reward."
        },
    )

    def __post_init__(self):
        self.alpha, self.beta = resolve_alpha_beta(self.alpha, self.beta)
        default_to_float32_without_bf16(self)
        if not math.isfinite(self.cut_log_penalty) or self.cut_log_penalty < 0:
            raise ValueError(
                f"PowerSelfRewardConfig: cut_log_penalty must be >= 0, got {self.cut_log_penalty}."
            )
        if not math.isfinite(self.self_reward_weight) or self.self_reward_weight < 0:
            raise ValueError(
                f"PowerSelfRewardConfig: self_reward_weight must be a finite number >= 0, got {self.self_reward_weight}."
            )
        super().__post_init__()
        for message in self.optimum_warnings():
            warnings.warn(message, UserWarning, stacklevel=3)

    @property
    def implied_alpha(self) -> float:
        """The exponent of p_ref in the optimum: 1 + self_reward_weight / beta."""
        return 1.0 + self.self_reward_weight / self.beta

    def optimum_warnings(self) -> list[str]:
        """One message per setting that moves the optimum away from p_ref^alpha (empty with the defaults)."""
        out = []
        target = f"p_ref^alpha (alpha={self.alpha:g})"
        if self.normalize_advantages:
            out.append(
                "normalize_advantages=True divides the advantages by their batch std: the update is then no longer "
                f"the gradient of KL(pi || {target}) but a rescaling of it by a random, sample-dependent factor that "
                "blows up as the rewards become equal near the optimum. p_ref^alpha is still a fixed point, but "
                "convergence to it is no longer guaranteed. Leave it False."
            )
        off_policy = (
            self.num_iterations > 1 or (self.steps_per_generation or 1) > self.gradient_accumulation_steps
        )
        if off_policy:
            out.append(
                f"num_iterations={self.num_iterations} / steps_per_generation={self.steps_per_generation} > "
                f"gradient_accumulation_steps={self.gradient_accumulation_steps} reuses completions after the policy "
                f"has moved; the PPO ratio clipping (epsilon={self.epsilon}) then biases the REINFORCE gradient, and "
                f"{target} is the optimum only in the on-policy limit."
            )
        sampler = []
        if self.temperature != 1.0:
            sampler.append(f"temperature={self.temperature}")
        if self.top_p < 1.0:
            sampler.append(f"top_p={self.top_p}")
        if self.top_k and self.top_k > 0:
            sampler.append(f"top_k={self.top_k}")
        if self.min_p:
            sampler.append(f"min_p={self.min_p}")
        if self.repetition_penalty != 1.0:
            sampler.append(f"repetition_penalty={self.repetition_penalty}")
        gen_kwargs = self.generation_kwargs if isinstance(self.generation_kwargs, dict) else {}
        sampler += [f"generation_kwargs[{k!r}]" for k in _SAMPLER_CHANGING_KEYS if k in gen_kwargs]
        if self.vllm_structured_outputs_regex:
            sampler.append("vllm_structured_outputs_regex")
        if sampler:
            message = (
                f"{', '.join(sampler)}: completions are no longer sampled from pi itself, so the REINFORCE gradient "
                f"is biased and the optimum is not {target}."
            )
            if self.temperature != 1.0:
                message += (
                    f" With temperature T={self.temperature} TRL scores both pi and p_ref at temperature T, so what "
                    "is trained towards the power target is pi at temperature T, and the target is "
                    "(p_ref at temperature T)^alpha, not p_ref^alpha."
                )
            out.append(message)
        if self.mask_truncated_completions:
            out.append(
                "mask_truncated_completions=True drops truncated completions from the loss: the probability of cutting "
                "is then not trained at all, so the optimum is not a power distribution (neither the truncated nor "
                "the finished-only one). For the finished-only target set finished_only=True instead."
            )
        if self.sync_ref_model:
            out.append(
                "sync_ref_model=True moves the reference towards the policy every ref_model_sync_steps steps: the "
                "target p_ref^alpha moves with it (repeated sharpening), so the final policy is not p_ref^alpha of "
                "the initial model."
            )
        if not self.disable_dropout:
            out.append(
                "disable_dropout=False: with dropout active the self-reward is a noisy log p_ref whose mean is not "
                f"log p_ref (Jensen), which moves the optimum away from {target}."
            )
        return out


__all__ = ["DEFAULT_ALPHA", "PowerSelfRewardConfig", "resolve_alpha_beta"]
