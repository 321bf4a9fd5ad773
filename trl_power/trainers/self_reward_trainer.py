"""KL-regularised RL with the model's own sequence log-probability as reward: its exact optimum is p_ref^alpha.

    max_pi  E_{y~pi}[ log p_ref(y|x) ] - beta * KL(pi || p_ref)        is solved by        pi* ∝ p_ref^(1 + 1/beta)

(the general KL-regularised optimum pi* ∝ p_ref * exp(r / beta) with r = log p_ref), so alpha = 1 + 1/beta. Up to a
constant the objective equals -beta * KL(pi || p_alpha): per sequence this is REINFORCE on

    R(y) = (1 + beta) * log p_ref(y|x) - beta * log pi(y|x),

which is constant (= beta * log Z_alpha) exactly at pi = p_alpha, so every leave-one-out advantage, and with it the
gradient estimate, vanishes at the optimum. The reward is the sum of the reference per-token log-probs that the KL
term computes anyway (EOS included, padding excluded): no extra forward pass.

See docs/design.md (the science) and docs/self_reward.md; Tomihari & Sato 2026 (arXiv 2605.04542).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import torch
from accelerate.utils import gather
from trl import RLOOTrainer
from trl.trainer.utils import get_config_model_id, nanstd

from trl_power.modeling import merge_eos_ids, stop_token_ids
from trl_power.trainers.self_reward_config import PowerSelfRewardConfig
from trl_power.trainers.utils import POWER_PAPER, check_private_hooks

if TYPE_CHECKING:  # pragma: no cover
    from datasets import Dataset, IterableDataset
    from peft import PeftConfig
    from transformers import PreTrainedModel, PreTrainedTokenizerBase, ProcessorMixin, TrainerCallback


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
        check_private_hooks(RLOOTrainer)
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
        if args.stop_strings:
            self._add_stop_token_ids(stop_token_ids(self._tokenizer, args.stop_strings))
        if self.use_vllm and self.vllm_mode == "colocate":
            self._sync_colocated_weights_through_vllm_reload()

    def _add_stop_token_ids(self, ids: list[int]) -> None:
        """`stop_strings`: RLOO's end ids (which decide what is a finished completion, its mask and the cut test
        here) and both generation backends' stopping rule get the stop tokens."""
        self.eos_token_ids = merge_eos_ids(self.eos_token_ids, ids)
        if self.use_vllm:
            generation = self.vllm_generation.generation_kwargs
            generation["stop_token_ids"] = merge_eos_ids(generation.get("stop_token_ids"), ids)
        else:
            self.generation_kwargs["eos_token_id"] = self.eos_token_ids
            self.generation_config.eos_token_id = self.eos_token_ids

    def _sync_colocated_weights_through_vllm_reload(self) -> None:
        """TRL's colocate sync (gathering, PEFT merging, waking a sleeping engine, prefix-cache reset: all TRL's),
        run inside vLLM's layerwise reload (`weights_reloaded_in_place`): TRL loads each parameter into the engine
        model's `layer.weight`, which vLLM's CPU build empties when it packs a layer for its own GEMM kernel (and
        quantized engines keep processed copies), so without the reload the sync fails or leaves the engine on the
        old weights. The reload gets copies of the loaded tensors (with PEFT, TRL unmerges the adapter before the
        reload processes the padded-vocabulary layers at the end) and fails when a layer of the engine got no
        weights (vLLM alone would keep its old ones)."""
        from trl_power.sampling.vllm_engine import weights_reloaded_in_place

        generation = self.vllm_generation
        sync = generation.sync_weights

        def sync_weights() -> None:
            if generation.enable_sleep_mode:  # the layers must be mapped before the reload captures them
                generation.llm.wake_up(tags=["weights"])
            with weights_reloaded_in_place(generation.llm):
                sync()

        generation.sync_weights = sync_weights

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


__all__ = ["PowerSelfRewardTrainer", "grouped_covariance", "no_reward", "power_target_logps"]
