"""`PowerDistillConfig`: TRL's `SFTConfig` with the power self-distillation settings (alpha, the online teacher's
sampler and engine, the weighted loss), every check that needs only the config in `__post_init__`. The trainer is
`trl_power.trainers.distill_trainer`."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

from trl import SFTConfig

from trl_power.sampling import PowerSamplingConfig
from trl_power.sampling.vllm_engine import VLLMArguments
from trl_power.trainers.utils import default_to_float32_without_bf16


# VLLMArguments first among the bases so that its fields come after SFTConfig's (a dataclass orders fields from the
# last base to the first): `output_dir` stays the first positional field, as in every `TrainingArguments`.
@dataclass
class PowerDistillConfig(VLLMArguments, SFTConfig):
    r"""
    Configuration class for the [`PowerDistillTrainer`].

    Only the parameters specific to power self-distillation are listed; every [`~trl.SFTConfig`] parameter (data
    handling, `completion_only_loss`, `packing` (off by default), `max_length`, `num_train_epochs` (3),
    `lr_scheduler_type` (linear), `peft`...) passes through unchanged, except two defaults:

    - `learning_rate` (`float`, *optional*): `None` (default) means 2e-4 for a PEFT student (a LoRA adapter; TRL's
      SFT example scripts use 2e-4 with `--use_peft`) and SFT's 2e-5 for a full fine-tune; the trainer settles and
      logs it. Measured on Gemma 3 270M in BENCHMARKS.md §10 (docs/distill.md, "Settings that learn").
    - `bf16`: as TRL it defaults to `True`, but to `False` on a machine without a bf16-capable accelerator (where
      transformers would refuse the config unless `use_cpu=True`).

    Parameters:
        > Parameters of the teacher

        sampling_config ([`PowerSamplingConfig`], `dict` or `str`, *optional*):
            Online mode: how the trainer draws teacher samples from p_alpha itself, for a prompt-only training data
            set. A `PowerSamplingConfig`, its fields as a dict, or that dict as a JSON string (command line). The
            teacher is the base model: for a PEFT student the same weights with the adapter disabled (no second
            copy), otherwise the `teacher_model` given to the trainer or a frozen copy of the initial model. Stored as
            a dict; [`~PowerDistillConfig.power_sampling_config`] gives the object. `None` (default): offline mode,
            the data set holds the teacher completions (e.g. from [`~trl_power.generate_power_dataset`]).
        use_vllm (`bool`, *optional*, defaults to `False`):
            Online mode: the teacher samples on a vLLM engine of the base model (`trl_power.load_vllm`, one per process
            under `accelerate launch`), loaded from the model's `name_or_path` (for a PEFT student: its base model;
            otherwise `teacher_model` or the initial checkpoint). The `vllm_*` settings
            (`vllm_gpu_memory_utilization`, defaults to `0.3` here since the engine shares the GPU with training;
            `vllm_tensor_parallel_size`, `vllm_max_model_length`, `vllm_kv_cache_memory_bytes`, `vllm_dtype`,
            `vllm_kwargs`) are those of [`~trl_power.sampling.vllm_engine.VLLMArguments`].
        teacher_refresh_steps (`int`, *optional*, defaults to `1`):
            Online mode: teacher samples of a prompt are drawn the first time the prompt is needed in a refresh round
            of this many optimizer steps, and reused within the round (a prompt seen again in a later round gets fresh
            samples). `1`: fresh teacher samples at every step, i.e. stochastic gradient descent on the population
            objective KL(p_alpha || pi) with no finite-sample overfitting.
        use_sampled_ids (`bool`, *optional*, defaults to `True`):
            When the data set has `prompt_ids` and `completion_ids` columns (as written by `generate_power_dataset`),
            train on exactly those token ids: input = prompt_ids + completion_ids, loss on the completion ids. The
            student then learns exactly the sampled sequences (EOS only where the teacher generated it; a completion
            cut at `max_new_tokens` gets no EOS). `False`: use SFTTrainer's text pipeline on `prompt`/`completion`,
            which re-tokenizes the text and appends EOS to every completion.
        finished_only (`bool`, *optional*):
            Distill p^alpha over finished answers (those that end with EOS) only (`True`, the default offline; online
            the default is the sampling config's `finished_only`, itself `True` by default): rows with `finished=False` (or, with
            exact ids and no `finished` column, whose `completion_ids` do not end with EOS) are dropped; online, the
            teacher samples this target (`PowerSamplingConfig.finished_only`). `False`: the power of p truncated at
            `max_new_tokens`, cut answers included and trained without an EOS (the text path appends EOS to
            finished rows only).
        loss_normalizer (`str`, *optional*, defaults to `"dataset_mean"`):
            The divisor of a batch's (weighted) NLL. `"dataset_mean"`: the batch's number of sequences times the data
            set's mean weighted completion length m = (1/n) sum_i w_i T_i, constant over the run, so the expected batch
            loss is the full data set's loss at every batch size (unbiased gradients; SGD's fixed point is the
            weighted empirical distribution). Under gradient accumulation the count is over the accumulated batch, and
            with several processes over all of them (as `average_tokens_across_devices`), so the gradient is that of
            the global batch's mean. Online, and for an `IterableDataset`, m is the running mean over the teacher rows
            seen so far (it settles to a constant). `"batch_tokens"`: SFTTrainer's rule, the batch's own weighted token
            count sum_{i in B} w_i T_i (biased at small batches; at batch 1 the weights cancel).
        weight_sampling (`bool`, *optional*):
            Offline weighted rows (a `weight` column, a map-style data set): draw the training rows with replacement
            with probability w_i / sum_j w_j and train them unweighted, divided by the batch's rows times the
            weighted mean length m_w = sum_i w_i T_i / sum_i w_i. The expected batch loss is the same
            sum_i w_i NLL_i / sum_i w_i T_i as with weighted batches, but every row of a batch counts fully: with
            weights as uneven as merged SMC particles (a prompt's mode weighs ~100x its rare answers) a weighted
            batch of 16 rows has an effective size of 1-3, a weight-sampled one of 16. An epoch draws as many rows
            as the data set has; epoch e's draws depend on (`data_seed` or `seed`, e) alone, so a resumed run draws
            what the uninterrupted one did. `None` (default): on when the train data set's weights vary (particle
            sets; the trainer logs it with the effective size a weighted batch would have had), off otherwise
            (unweighted or equally weighted rows, online mode, iterable data). `False`: weighted batches.
        alpha (`float`, *optional*):
            The power of the teacher data, recorded in the model card. Read from `sampling_config` (online) or from
            the data set metadata written by `generate_power_dataset` when not given; giving a different value than
            those is an error. It does not change the loss: the data decide what is learned.

    > [!NOTE]
    > Loss: the NLL of the completion tokens, summed per sequence (the sequence log-likelihood is what
    > KL(p_alpha || pi) needs), each sequence's NLL times its weight (1 without a `weight` column), divided as
    > `loss_normalizer` says. With `"batch_tokens"` and unit weights this is exactly SFTTrainer's loss.
    """

    _VALID_DICT_FIELDS = SFTConfig._VALID_DICT_FIELDS + ["sampling_config", "vllm_kwargs"]

    learning_rate: float | None = field(
        default=None,
        metadata={
            "help": "The initial learning rate for AdamW. Default: 2e-4 for a PEFT (LoRA) student, 2e-5 for a full "
            "fine-tune."
        },
    )
    sampling_config: dict[str, Any] | str | None = field(
        default=None,
        metadata={
            "help": "Online mode: PowerSamplingConfig fields (a dict, or JSON on the command line) for drawing teacher "
            "samples from the base model during training. None: the data set holds the teacher completions."
        },
    )
    vllm_gpu_memory_utilization: float | None = field(
        default=0.3,
        metadata={
            "help": "Online mode with use_vllm: fraction of the GPU the teacher engine takes (shared with training)."
        },
    )
    teacher_refresh_steps: int = field(
        default=1,
        metadata={"help": "Online mode: teacher samples are redrawn every this many optimizer steps."},
    )
    use_sampled_ids: bool = field(
        default=True,
        metadata={
            "help": "Train on the exact `prompt_ids` + `completion_ids` of the data set when present (no "
            "re-tokenization, EOS only where sampled)."
        },
    )
    finished_only: bool | None = field(
        default=None,
        metadata={
            "help": "Distill p^alpha over finished answers only (rows that did not end with EOS are dropped; online, "
            "the teacher samples that target). False: the truncated target, cut answers trained without EOS."
        },
    )
    loss_normalizer: str = field(
        default="dataset_mean",
        metadata={
            "help": "Divisor of a batch's weighted NLL: 'dataset_mean' (sequences x the data set's mean weighted "
            "length: unbiased at any batch size) or 'batch_tokens' (SFTTrainer's per-batch token count).",
            "choices": ["dataset_mean", "batch_tokens"],
        },
    )
    weight_sampling: bool | None = field(
        default=None,
        metadata={
            "help": "Weighted rows: draw rows with probability proportional to their weight and train them "
            "unweighted (the same expected loss, every row of a batch counting fully). Default: on when the "
            "weights vary, off otherwise; False: weighted batches."
        },
    )
    alpha: float | None = field(
        default=None,
        metadata={
            "help": "Power of the teacher data, for the model card (read from the data/sampling config)."
        },
    )

    def __post_init__(self):
        default_to_float32_without_bf16(self)
        if isinstance(self.sampling_config, PowerSamplingConfig):
            self.sampling_config = self.sampling_config.to_dict()
        super().__post_init__()  # parses a JSON string in `sampling_config`
        if self.sampling_config is not None:
            if not isinstance(self.sampling_config, dict):
                raise TypeError(
                    "sampling_config must be a PowerSamplingConfig, a dict of its fields or a JSON string, got "
                    f"{type(self.sampling_config).__name__}."
                )
            sampled = self.sampling_config.get("finished_only")
            if self.finished_only is None:
                self.finished_only = True if sampled is None else bool(sampled)
            elif sampled is not None and bool(sampled) != self.finished_only:
                raise ValueError(
                    f"sampling_config finished_only={sampled} disagrees with PowerDistillConfig "
                    f"finished_only={self.finished_only}; give the same value (or set it on one of them only)."
                )
            self.sampling_config = {**self.sampling_config, "finished_only": self.finished_only}
            try:
                PowerSamplingConfig(**self.sampling_config)
            except TypeError as e:
                raise ValueError(f"sampling_config has fields PowerSamplingConfig does not know: {e}") from e
            sampling_alpha = float(self.sampling_config.get("alpha", PowerSamplingConfig.alpha))
            if self.alpha is not None and not math.isclose(self.alpha, sampling_alpha):
                raise ValueError(f"alpha={self.alpha} disagrees with sampling_config alpha={sampling_alpha}.")
            self.alpha = sampling_alpha
        if self.finished_only is None:
            self.finished_only = True
        self.check_vllm_arguments()
        if self.use_vllm and self.sampling_config is None:
            raise ValueError(
                "use_vllm is for the online teacher: set sampling_config (online mode) or use_vllm=False."
            )
        if self.loss_normalizer not in ("dataset_mean", "batch_tokens"):
            raise ValueError(
                f"loss_normalizer must be 'dataset_mean' or 'batch_tokens', got {self.loss_normalizer!r}"
            )
        if self.teacher_refresh_steps < 1:
            raise ValueError(f"teacher_refresh_steps must be >= 1, got {self.teacher_refresh_steps}")
        if self.alpha is not None and not (math.isfinite(self.alpha) and self.alpha > 0):
            raise ValueError(f"alpha must be a finite number > 0, got {self.alpha}")
        if self.sampling_config is not None:  # online mode: weighted teacher rows, completion tokens only
            self.check_weighted_loss_settings()
            if self.completion_only_loss is False:
                raise ValueError(
                    "Online mode trains on the completion tokens only; leave completion_only_loss unset."
                )
            self.completion_only_loss = True  # also for the (offline-format) eval data sets

    def check_weighted_loss_settings(self) -> None:
        """Weighted teacher rows (a `weight` column, or online mode) need one sequence per row and no label
        smoothing; raises a `ValueError` otherwise."""
        if self.packing or self.padding_free:
            raise ValueError(
                "Weighted teacher samples (a 'weight' column, or online mode) need one sequence per row: set "
                "packing=False and padding_free=False."
            )
        if self.label_smoothing_factor > 0:
            raise ValueError("label_smoothing_factor is not supported with weighted teacher samples.")

    @property
    def power_sampling_config(self) -> PowerSamplingConfig | None:
        """`sampling_config` as a `PowerSamplingConfig` (None in offline mode)."""
        return None if self.sampling_config is None else PowerSamplingConfig(**self.sampling_config)


__all__ = ["PowerDistillConfig"]
