"""KL-regularised RL with the model's own sequence log-probability as reward: its exact optimum is p_ref^alpha.

    max_pi  E_{y~pi}[ log p_ref(y|x) ] - beta * KL(pi || p_ref)        is solved by        pi* ∝ p_ref^(1 + 1/beta)

(the general KL-regularised optimum pi* ∝ p_ref * exp(r / beta) with r = log p_ref), so alpha = 1 + 1/beta. Up to a
constant the objective equals -beta * KL(pi || p_alpha): per sequence this is REINFORCE on

    R(y) = (1 + beta) * log p_ref(y|x) - beta * log pi(y|x),

which is constant (= beta * log Z_alpha) exactly at pi = p_alpha, so every leave-one-out advantage, and with it the
gradient estimate, vanishes at the optimum. The reward is the sum of the reference per-token log-probs that the KL
term computes anyway (EOS included, padding excluded): no extra forward pass.

See DESIGN.md section 1.2 and Tomihari & Sato 2026 (arXiv 2605.04542).
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import torch
from accelerate.utils import gather
from trl import RLOOConfig, RLOOTrainer
from trl.trainer.utils import get_config_model_id, nanstd

from trl_power.theory import alpha_to_beta, beta_to_alpha
from trl_power.trainers import POWER_PAPER, default_to_float32_without_bf16

if TYPE_CHECKING:  # pragma: no cover
    from datasets import Dataset, IterableDataset
    from peft import PeftConfig
    from transformers import PreTrainedModel, PreTrainedTokenizerBase, ProcessorMixin, TrainerCallback

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


def no_reward(completions: list, **kwargs) -> list[float]:
    """The reward function used when none is given: 0 for every completion (RLOO needs one)."""
    return [0.0] * len(completions)


class PowerSelfRewardTrainer(RLOOTrainer):
    r"""
    Trainer whose exact optimum is the power distribution p_ref(y|x)^alpha, by KL-regularised RL with the model's
    own sequence log-probability as reward:

        max_pi E_pi[log p_ref(y|x)] - beta * KL(pi || p_ref)   =>   pi* ∝ p_ref^(1 + 1/beta),   alpha = 1 + 1/beta.

    Per sequence this is REINFORCE on R = (1 + beta) log p_ref(y) - beta log pi(y), i.e. gradient descent on
    KL(pi || p_alpha). How: RLOO's sequence-level KL penalty -beta * sum_t (log pi - log p_ref) is computed against
    the reference per-token log-probs scaled by (beta + w) / beta (w = `self_reward_weight`), which turns it into
    -beta * sum_t log pi + (beta + w) * sum_t log p_ref: the KL to the unnormalised target p_ref^alpha. The self-reward
    is therefore the reference pass RLOO runs anyway (EOS included, padding excluded): no extra forward pass, and
    the user's reward functions, their weights, clipping and processing classes keep exactly RLOO's meaning. With a
    PEFT model (a `peft_config`) the reference is the same weights with the adapter disabled: no second copy.

    Why [`~trl.RLOOTrainer`] and not [`~trl.GRPOTrainer`]: the estimator must keep p_ref^alpha as the exact optimum,
    and RLOO's already does. RLOO puts the KL into the reward as a *sequence* sum, uses a leave-one-out baseline
    (unbiased), does not scale advantages by their std (`normalize_advantages=False`), and its loss is a per-sequence
    mean with a sequence-level ratio (equal to 1 on-policy, so the PPO clipping never binds). GRPO's defaults would
    each move the optimum: a per-token k3 KL added to the loss instead of the reward, group-std scaling of
    advantages (`scale_rewards="group"`), token-level loss aggregation (`loss_type="dapo"`, i.e. a length-weighted
    objective) and a group-mean baseline that includes the sample itself.

    Example:

    ```python
    >>> from datasets import Dataset
    >>> from trl_power import PowerSelfRewardConfig, PowerSelfRewardTrainer

    >>> dataset = Dataset.from_dict({"prompt": ["Question: what is 2 + 2?"] * 64})
    >>> trainer = PowerSelfRewardTrainer(
    ...     model="Qwen/Qwen2.5-0.5B-Instruct",
    ...     args=PowerSelfRewardConfig(output_dir="out", alpha=4.0),
    ...     train_dataset=dataset,
    ... )
    >>> trainer.train()
    ```

    Args:
        model (`str`, [`~transformers.PreTrainedModel`] or [`~peft.PeftModel`]):
            Model to train; also the reference p_ref (a frozen copy, or the base weights with the adapter off). As
            in [`~trl.RLOOTrainer`]: a PEFT model passed with an adapter already trained gets a frozen copy of that
            adapter as reference (TRL's "ref" adapter), so p_ref is then the adapted model.
        reward_funcs (`RewardFunc | list[RewardFunc]`, *optional*):
            Optional true rewards, any form [`~trl.RLOOTrainer`] accepts, weighted by `args.reward_weights` as in
            RLOO. The total reward is `self_reward_weight * log p_ref + sum_i reward_weights[i] * r_i`. `None`
            (default): self-reward only (a constant-zero reward function, `no_reward`, stands in for RLOO).
        args ([`PowerSelfRewardConfig`], *optional*):
            Configuration. If `None`, a default [`PowerSelfRewardConfig`] (alpha = 4) is used.
        train_dataset, eval_dataset, processing_class, reward_processing_classes, callbacks, optimizers,
        quantization_config, peft_config:
            As in [`~trl.RLOOTrainer`].

    Logged each step: RLOO's metrics with RLOO's meaning (`reward` and `rewards/<name>/*` are the user's reward
    functions; `kl` is the per-token mean of log pi - log p_ref), and: `self_reward/mean` (and `/std`):
    E[log p_ref(y|x)]; `total_reward/mean`: E[sum_i w_i r_i + self_reward_weight * log p_ref] (minus beta *
    cut_log_penalty for cut completions with `finished_only`); `sequence_kl`: E[sum_t log pi - log p_ref];
    `objective`: total reward - beta * sequence_kl (= -beta KL(pi || p_alpha) + const without true rewards);
    `alpha`: the exponent the settings imply, 1 + self_reward_weight / beta; and for each true reward
    `rewards/<name>/cov_self_reward`, the covariance of r with log p_ref within each prompt's group of completions,
    averaged over prompts (d/d alpha E_{p_alpha}[r] = Cov_{p_alpha}(r, log p): a true reward rises under sharpening
    when it is positive), plus `rewards/<name>/cov_self_reward_batch` over the whole batch. The completions table
    gets a `self_reward` column.
    """

    _tag_names = ["trl", "rloo", "trl-power", "power-self-reward"]
    _name = "Power Self-Reward"
    _paper = POWER_PAPER

    def __init__(
        self,
        model: str | PreTrainedModel,
        reward_funcs: Any | list[Any] | None = None,
        args: PowerSelfRewardConfig | None = None,
        train_dataset: Dataset | IterableDataset | None = None,
        eval_dataset: Any = None,
        processing_class: PreTrainedTokenizerBase | ProcessorMixin | None = None,
        reward_processing_classes: Any = None,
        callbacks: list[TrainerCallback] | None = None,
        optimizers: tuple[torch.optim.Optimizer | None, torch.optim.lr_scheduler.LambdaLR | None] = (
            None,
            None,
        ),
        quantization_config: Any = None,
        peft_config: PeftConfig | None = None,
    ):
        if args is None:
            model_name = model if isinstance(model, str) else get_config_model_id(model.config)
            args = PowerSelfRewardConfig(f"{model_name.split('/')[-1]}-PowerSelfReward")
        elif not isinstance(args, PowerSelfRewardConfig):
            raise TypeError(
                f"PowerSelfRewardTrainer needs a PowerSelfRewardConfig (which sets alpha/beta and checks the "
                f"estimator settings), got {type(args).__name__}. An RLOOConfig's beta would set alpha = 1 + 1/beta "
                "(21 for RLOO's default 0.05): build a PowerSelfRewardConfig with the same fields and the alpha you want."
            )
        if reward_funcs is None or (isinstance(reward_funcs, list) and not reward_funcs):
            if reward_processing_classes is not None:
                raise ValueError("reward_processing_classes was given without reward functions.")
            if args.reward_weights is not None:
                raise ValueError("reward_weights was given without reward functions.")
            reward_funcs = [no_reward]
        self._reference_capture: list[tuple[torch.nn.Module, torch.Tensor]] | None = None
        self._local_cut: torch.Tensor | None = None
        super().__init__(
            model=model,
            reward_funcs=reward_funcs,
            args=args,
            train_dataset=train_dataset,
            eval_dataset=eval_dataset,
            processing_class=processing_class,
            reward_processing_classes=reward_processing_classes,
            callbacks=callbacks,
            optimizers=optimizers,
            quantization_config=quantization_config,
            peft_config=peft_config,
        )
        self.num_true_rewards = 0 if self.reward_funcs == [no_reward] else len(self.reward_funcs)

    # ----- the power target, in RLOO's reference pass ---------------------------------------------------------------

    @property
    def reference_scale(self) -> float:
        """(beta + w) / beta: the factor on log p_ref that turns RLOO's KL penalty into the KL to p_ref^alpha."""
        return (self.beta + self.args.self_reward_weight) / self.beta

    def _generate_and_score_completions(self, inputs: list[dict[str, Any]]) -> dict[str, Any]:
        # Collect the no-grad scoring passes (policy "old" log-probs, then reference log-probs) of this batch.
        self._reference_capture = []
        try:
            output = super()._generate_and_score_completions(inputs)
            self._restore_kl_metric(output)
            return output
        finally:
            self._reference_capture = None
            self._local_cut = None

    def _get_per_token_logps_and_entropies(
        self, model, input_ids, attention_mask, logits_to_keep, *args, **kwargs
    ):
        out = super()._get_per_token_logps_and_entropies(
            model, input_ids, attention_mask, logits_to_keep, *args, **kwargs
        )
        capture = self._reference_capture
        if capture is None or torch.is_grad_enabled():
            return out
        capture.append((model, out[0]))
        is_reference = model is self.ref_model if self.ref_model is not None else len(capture) == 2
        if not is_reference:
            return out
        completion_ids = input_ids[:, -logits_to_keep:]
        self._local_cut = ~torch.isin(
            completion_ids, torch.tensor(self.eos_token_ids, device=input_ids.device)
        ).any(1)
        return (
            power_target_logps(out[0], self.reference_scale, self._cut_log_penalty(), self._local_cut),
            *out[1:],
        )

    def _cut_log_penalty(self) -> float:
        return self.args.cut_log_penalty if self.args.finished_only else 0.0

    def _scoring_passes(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(policy, reference) per-token log-probs [B, C] of the local batch, from the passes RLOO just ran (the
        reference as computed, before the scaling)."""
        entries = self._reference_capture
        if entries is None:
            raise RuntimeError(
                "The self-reward is read from the reference pass of `_generate_and_score_completions`; it cannot be "
                "computed outside of it."
            )
        if self.ref_model is not None:
            ref = [lp for m, lp in entries if m is self.ref_model]
            pol = [lp for m, lp in entries if m is not self.ref_model]
        else:  # PEFT: both passes run on self.model; RLOO scores the policy first, then the adapter-off reference
            pol, ref = [lp for _, lp in entries[:1]], [lp for _, lp in entries[1:2]]
        if len(entries) != 2 or len(ref) != 1 or len(pol) != 1:
            raise RuntimeError(
                f"Expected exactly one policy and one reference scoring pass before the rewards, found "
                f"{len(entries)} passes. The installed TRL computes them differently from the RLOOTrainer this "
                f"trainer was written against."
            )
        return pol[0], ref[0]

    def _self_reward_and_kl(
        self, completion_ids: Sequence[Sequence[int]]
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Per local completion: log p_ref(y|x) = sum_t log p_ref(y_t | x, y_<t) (EOS included, padding excluded) and
        the sequence KL sum_t (log pi - log p_ref)."""
        policy_lp, ref_lp = self._scoring_passes()
        if ref_lp.size(0) != len(completion_ids):
            raise RuntimeError(f"{ref_lp.size(0)} scored rows but {len(completion_ids)} completions.")
        device = ref_lp.device
        lengths = torch.tensor([len(c) for c in completion_ids], device=device)
        mask = torch.arange(ref_lp.size(1), device=device).unsqueeze(0) < lengths.unsqueeze(1)
        self_reward = torch.where(mask, ref_lp.float(), 0.0).sum(1)
        sequence_kl = torch.where(mask, policy_lp.float() - ref_lp.float(), 0.0).sum(1)
        if self.mask_truncated_completions:
            # RLOO zeroes these rows' completion mask, so neither term reaches their reward: not scored (NaN here).
            ends = {*self.eos_token_ids, self._tokenizer.pad_token_id}
            truncated = torch.tensor(
                [len(c) > 0 and c[-1] not in ends for c in completion_ids], device=device
            )
            self_reward[truncated] = torch.nan
            sequence_kl[truncated] = torch.nan
        return self_reward, sequence_kl

    # ----- logging --------------------------------------------------------------------------------------------------

    def _calculate_rewards(self, inputs, prompts, completions, completion_ids_list):
        rewards_per_func = super()._calculate_rewards(inputs, prompts, completions, completion_ids_list)
        self_reward, sequence_kl = self._self_reward_and_kl(completion_ids_list)
        self._log_completion_extra("self_reward", self_reward.tolist())
        cut = self._local_cut.float() if self._local_cut is not None else torch.zeros_like(self_reward)
        # All processes reach this point together (the parent has just gathered), so gathering here is safe.
        gathered = gather(torch.stack([self_reward, sequence_kl, cut.to(self_reward.device)], 1))
        mode = "train" if self.model.training else "eval"
        num_generations = self.num_generations if mode == "train" else self.num_generations_eval
        self._log_power_metrics(mode, rewards_per_func, *gathered.unbind(1), num_generations)
        return rewards_per_func

    def _log_power_metrics(
        self,
        mode: str,
        rewards_per_func: torch.Tensor,
        self_reward: torch.Tensor,
        sequence_kl: torch.Tensor,
        cut: torch.Tensor,
        num_generations: int,
    ) -> None:
        metrics = self._metrics[mode]
        weights = self.reward_weights.to(rewards_per_func.device)
        user = (rewards_per_func * weights).nansum(1)
        total = user + self.args.self_reward_weight * self_reward - self.beta * self._cut_log_penalty() * cut
        metrics["self_reward/mean"].append(torch.nanmean(self_reward).item())
        metrics["self_reward/std"].append(nanstd(self_reward).item())
        metrics["total_reward/mean"].append(torch.nanmean(total).item())
        metrics["sequence_kl"].append(torch.nanmean(sequence_kl).item())
        metrics["alpha"].append(self.args.implied_alpha)
        metrics["objective"].append(torch.nanmean(total - self.beta * torch.nan_to_num(sequence_kl)).item())
        for i in range(self.num_true_rewards):
            name = self.reward_func_names[i]
            r = rewards_per_func[:, i]
            metrics[f"rewards/{name}/cov_self_reward"].append(
                grouped_covariance(r, self_reward, num_generations)
            )
            metrics[f"rewards/{name}/cov_self_reward_batch"].append(
                grouped_covariance(r, self_reward, r.numel())
            )

    def _restore_kl_metric(self, output: dict[str, Any]) -> None:
        """RLOO logged `kl` against the scaled reference; put back its meaning, the per-token mean of
        log pi - log p_ref over the completion tokens of all processes."""
        mode = "train" if self.model.training else "eval"
        kl_values = self._metrics[mode].get("kl")
        if not kl_values or self._reference_capture is None or len(self._reference_capture) != 2:
            return
        policy_lp, ref_lp = self._scoring_passes()
        mask = output["completion_mask"].float()
        stats = self.accelerator.reduce(
            torch.stack([((policy_lp - ref_lp) * mask).sum(), mask.sum()]), reduction="sum"
        )
        kl_values[-1] = (stats[0] / stats[1].clamp(min=1.0)).item()


def power_target_logps(
    ref_logps: torch.Tensor, scale: float, cut_log_penalty: float, cut: torch.Tensor
) -> torch.Tensor:
    """The per-token "reference" log-probs that make RLOO's KL penalty the KL to the power target: scale * log p_ref,
    and -cut_log_penalty added on the first completion token of a cut completion (finished-only target). RLOO sums
    them over the completion mask, so -beta * sum_t (log pi - target) = -beta * log pi + (beta + w) * log p_ref -
    beta * cut_log_penalty * 1{cut}."""
    target = ref_logps * scale
    if cut_log_penalty:
        target = target.clone()
        target[:, 0] = target[:, 0] - cut_log_penalty * cut.to(target.dtype)
    return target


def grouped_covariance(x: torch.Tensor, y: torch.Tensor, group_size: int) -> float:
    """Mean over consecutive groups of `group_size` rows of the unbiased covariance of x and y within the group,
    ignoring rows where either is NaN (groups with fewer than 2 valid rows are skipped; NaN if none is left)."""
    x, y = x.double().view(-1, group_size), y.double().view(-1, group_size)
    valid = ~(torch.isnan(x) | torch.isnan(y))
    n = valid.sum(1)
    xz, yz = torch.where(valid, x, 0.0), torch.where(valid, y, 0.0)
    xm = xz.sum(1) / n.clamp(min=1)
    ym = yz.sum(1) / n.clamp(min=1)
    cov = (torch.where(valid, (x - xm[:, None]) * (y - ym[:, None]), 0.0)).sum(1) / (n - 1).clamp(min=1)
    keep = n >= 2
    return float(cov[keep].mean()) if keep.any() else math.nan


__all__ = [
    "PowerSelfRewardConfig",
    "PowerSelfRewardTrainer",
    "grouped_covariance",
    "no_reward",
    "power_target_logps",
    "resolve_alpha_beta",
]
