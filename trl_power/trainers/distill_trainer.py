"""Power self-distillation: fit a student to the power distribution p_alpha(y|x) ∝ p(y|x)^alpha by maximum likelihood.

    min_theta KL(p_alpha || pi_theta) = max_theta E_{x, y~p_alpha(.|x)}[ log pi_theta(y|x) ] + const

is plain NLL of the completion tokens on teacher samples y ~ p_alpha (docs/design.md, section 1). With weighted teacher
samples (SMC/SIR particle sets, `weight` column), the self-normalised weighted NLL over the data set

    L(theta) = sum_i w_i * (-log pi_theta(y_i|x_i)) / sum_i w_i T_i           (T_i: completion tokens of row i)

is the importance-sampling estimate of the same cross-entropy (per token); its minimiser over all distributions is
the weighted empirical distribution of the particles, a consistent estimate of p_alpha. A batch B of b rows is
divided by b * m, m = (1/n) sum_i w_i T_i the data set's mean weighted length, so that E_B[L_B] = L for random
batches of any size and SGD's fixed point is that minimiser; a divisor recomputed per batch (sum_{i in B} w_i T_i,
SFTTrainer's rule) is not, and at batch 1 it ignores the weights and normalises by length. The student then answers like the power
sampler at the cost of one plain sample. See Tomihari & Sato 2026 (arXiv 2605.04542).
"""

from __future__ import annotations

import copy
import dataclasses
import json
import math
import os
import textwrap
import warnings
from collections.abc import Callable
from dataclasses import replace
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from accelerate.utils import is_peft_model
from transformers import TrainingArguments
from transformers.utils import logging
from trl import SFTTrainer
from trl.data_utils import get_dataset_column_names
from trl.trainer.utils import get_config_model_id

from trl_power.data import power_dataset_metadata
from trl_power.modeling import adapter_disabled, eos_token_ids, merge_eos_ids, stop_token_ids
from trl_power.prompts import prompt_format, tokenize_prompt
from trl_power.sampling import PowerSampler
from trl_power.seeding import derived_seed
from trl_power.teacher import teacher_rows, training_example
from trl_power.theory import effective_sample_size
from trl_power.trainers.distill_config import PowerDistillConfig
from trl_power.trainers.utils import POWER_PAPER, check_private_hooks

logger = logging.get_logger(__name__)

if TYPE_CHECKING:  # pragma: no cover
    from datasets import Dataset, IterableDataset
    from peft import PeftConfig
    from transformers import PreTrainedModel, PreTrainedTokenizerBase, TrainerCallback

# The default learning rates (PowerDistillConfig.learning_rate=None): a LoRA adapter needs ~10x a full fine-tune's
# (TRL's SFT examples: 2e-4 with --use_peft; SFTConfig's own default 2e-5 is a full fine-tune's).
PEFT_LEARNING_RATE = 2e-4
FULL_LEARNING_RATE = 2e-5

# Columns that carry teacher completions, in any format SFTTrainer (or the exact-ids path) understands.
_COMPLETION_COLUMNS = ("completion", "completion_ids", "text", "messages", "conversations", "input_ids")


class _DistillCollator:
    """SFT's collator plus a `weight` tensor [B]; raw prompt rows (online mode) pass through as a list."""

    def __init__(self, lm_collator: Any):
        self.lm_collator = lm_collator

    def __call__(self, examples: list[dict[str, Any]]) -> Any:
        if "input_ids" not in examples[0]:
            return list(examples)
        weights = [float(ex["weight"]) for ex in examples] if "weight" in examples[0] else None
        batch = self.lm_collator([{k: v for k, v in ex.items() if k != "weight"} for ex in examples])
        if weights is not None:
            batch["weight"] = torch.tensor(weights, dtype=torch.float32)
        return batch


class WeightDrawnSampler(torch.utils.data.Sampler[int]):
    """`num_samples` row indices drawn with replacement with probability w_i / sum_j w_j (`weight_sampling`). Epoch e
    draws from a generator seeded by (seed, e) alone, so a run resumed in epoch e draws the rows the uninterrupted run
    drew there (the Trainer calls `set_epoch` before each epoch; a generator carried across epochs would restart at
    epoch 0's draws on resume)."""

    def __init__(self, weights: Any, num_samples: int, seed: int):
        self.weights = torch.as_tensor(weights, dtype=torch.float64)
        self.num_samples = num_samples
        self.seed = seed
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return self.num_samples

    def __iter__(self):
        # numpy rather than torch.multinomial, which refuses more than 2^24 categories (rows)
        rng = np.random.default_rng(derived_seed(self.seed, self.epoch))
        p = self.weights.numpy() / self.weights.sum().item()
        yield from rng.choice(len(p), self.num_samples, p=p).tolist()


def validate_teacher_dataset(
    dataset: Any, name: str, online: bool, use_sampled_ids: bool = True, formatted: bool = False
) -> None:
    """Clear errors, before training, for data sets that cannot be distilled from.

    Offline: there must be completions (a `completion`, `completion_ids`, `text`, `messages`, `conversations` or
    `input_ids` column), or a `formatting_func` that makes the text (`formatted`); none may leave nothing to train on.
    Online: a `prompt` column and no completions. A `weight` column must be finite, >= 0 and not all zero. An
    `IterableDataset` is checked on its first example only.
    """
    from datasets import Dataset

    columns = get_dataset_column_names(dataset)
    has_completions = any(c in columns for c in _COMPLETION_COLUMNS)
    if online:
        if "prompt" not in columns:
            raise ValueError(f"Online mode needs a 'prompt' column in the {name} data set; it has {columns}.")
        if has_completions:
            raise ValueError(
                f"The {name} data set has completions ({[c for c in _COMPLETION_COLUMNS if c in columns]}) but "
                "sampling_config is set (online mode draws its own teacher samples). Remove them, or leave "
                "sampling_config unset to distill from these completions."
            )
    elif not has_completions and not formatted:
        hint = (
            "it holds prompts only. Generate teacher completions with trl_power.generate_power_dataset, or set "
            "PowerDistillConfig(sampling_config=PowerSamplingConfig(...)) to sample them during training (online mode)."
            if "prompt" in columns
            else "it needs prompt/completion, completion_ids, text or messages columns."
        )
        raise ValueError(f"The {name} data set has no teacher completions ({columns}): {hint}")

    rows = dataset if isinstance(dataset, Dataset) else [next(iter(dataset))]
    n = len(rows)
    if n == 0:
        raise ValueError(f"The {name} data set is empty.")

    def column(col: str) -> list[Any]:
        return list(rows[col]) if isinstance(rows, Dataset) else [r[col] for r in rows]

    if online:
        for i, p in enumerate(column("prompt")):
            try:
                prompt_format(p)
            except ValueError as e:
                raise ValueError(f"Row {i} of the {name} data set: {e}") from None
    else:
        # Every row needs a token to train on. Sampled ids: at least one (an answer that is just EOS keeps its EOS).
        # Text: an empty completion is an answer that is just EOS, which SFT (and this trainer, for a finished row)
        # appends; only a row marked unfinished gets no EOS, so an empty one has nothing to train on.
        if "completion_ids" in columns and (
            use_sampled_ids and "prompt_ids" in columns or "completion" not in columns
        ):
            empty = [i for i, c in enumerate(column("completion_ids")) if c is None or len(c) == 0]
        elif "completion" in columns and "finished" in columns:
            empty = [
                i
                for i, (c, f) in enumerate(zip(column("completion"), column("finished")))
                if not f and _is_empty_completion(c)
            ]
        elif "input_ids" in columns:
            empty = [i for i, c in enumerate(column("input_ids")) if c is None or len(c) == 0]
        else:
            empty = []
        if empty:
            raise ValueError(
                f"{len(empty)} row(s) of the {name} data set have nothing to train on (rows {empty[:10]}): an empty "
                "completion_ids, or an empty completion marked finished=False. An answer that is just EOS keeps its "
                "EOS in completion_ids, and is finished=True in text form."
            )
    if "weight" in columns:
        try:
            w = np.asarray(column("weight"), dtype=np.float64)
        except (TypeError, ValueError):
            raise ValueError(f"The 'weight' column of the {name} data set must hold numbers.") from None
        bad = np.flatnonzero(~np.isfinite(w) | (w < 0))
        if bad.size:
            raise ValueError(
                f"The 'weight' column of the {name} data set must be finite and >= 0; rows {bad[:10].tolist()} "
                f"hold {w[bad[:10]].tolist()}."
            )
        if isinstance(rows, Dataset) and not w.sum() > 0:
            raise ValueError(f"The 'weight' column of the {name} data set is all zero.")


def _has_varying_weights(dataset: Any) -> bool:
    from datasets import Dataset

    if not isinstance(dataset, Dataset) or "weight" not in dataset.column_names:
        return False
    return len(set(dataset["weight"])) > 1


def _expected_batch_ess(weights: Any, batch_size: int, draws: int = 200, seed: int = 0) -> float:
    """The mean effective sample size (sum w)^2 / sum w^2 of random batches of `batch_size` rows (Monte Carlo)."""
    w = np.asarray(weights, dtype=np.float64)
    rng = np.random.default_rng(seed)
    batches = np.stack([rng.choice(w, min(batch_size, w.size), replace=False) for _ in range(draws)])
    return float(effective_sample_size(batches, axis=1).mean())


def _is_empty_completion(value: Any) -> bool:
    if value is None:
        return True
    if isinstance(value, str):
        return value == ""
    if isinstance(value, list):
        return len(value) == 0 or all(
            isinstance(m, dict) and m.get("role") == "assistant" and not m.get("content") for m in value
        )
    return False


def _declared_eos_ids(model: Any, processing_class: Any) -> list[int]:
    """The end ids the model declares (generation config, model config, tokenizer), known before SFTTrainer loads a
    model given as a path: then read from the path's generation config (an EOS set there, e.g. a newline, counts)."""
    try:
        if not isinstance(model, str):
            return eos_token_ids(model, processing_class)
        from transformers import GenerationConfig

        try:
            generation = GenerationConfig.from_pretrained(model)
        except OSError:  # no generation config: the tokenizer SFTTrainer loads gives the EOS
            return []
        return merge_eos_ids(getattr(processing_class, "eos_token_id", None), generation.eos_token_id)
    except ValueError:  # no EOS known yet: the tokenizer SFTTrainer loads gives it
        return []


def _as_distill_config(args: Any, model: Any) -> PowerDistillConfig:
    """`args` as a PowerDistillConfig: the default one for `model`, or, as SFTTrainer does with a TrainingArguments,
    the same fields with the rest at PowerDistillConfig's defaults; a `TypeError` for anything else."""
    if args is None:
        model_name = model if isinstance(model, str) else get_config_model_id(model.config)
        args = PowerDistillConfig(f"{model_name.split('/')[-1]}-PowerDistill")
    elif isinstance(args, TrainingArguments) and not isinstance(args, PowerDistillConfig):
        # As SFTTrainer does with a TrainingArguments: the same fields, the rest at PowerDistillConfig's defaults.
        fields = {f.name for f in dataclasses.fields(PowerDistillConfig) if f.init}
        values = {k: v for k, v in args.to_dict().items() if k in fields}
        values["hub_token"] = args.hub_token  # to_dict hides it
        args = PowerDistillConfig(**values)
    elif not isinstance(args, PowerDistillConfig):
        raise TypeError(
            f"PowerDistillTrainer needs a PowerDistillConfig (or an SFTConfig / TrainingArguments to convert), got "
            f"{type(args).__name__}."
        )
    else:  # the trainer settles defaults that depend on the data (weight_sampling, ...) on its own copy
        args = copy.copy(args)
    return args


class PowerDistillTrainer(SFTTrainer):
    r"""
    Power self-distillation: maximum likelihood on teacher samples from p_alpha(y|x) ∝ p(y|x)^alpha, i.e.
    min KL(p_alpha || pi_student). The student (usually a LoRA adapter on the base model) then answers like the power
    sampler at the cost of one plain sample.

    Offline mode: `train_dataset` holds teacher completions, e.g. from [`~trl_power.generate_power_dataset`] (exact
    sampled ids, `weight` column for particle sets), or any SFT prompt-completion / conversational data set. Online
    mode (`args.sampling_config` set): `train_dataset` holds prompts only and the trainer draws the teacher samples
    itself from the base model, refreshing them every `args.teacher_refresh_steps` steps; `per_device_train_batch_size`
    then counts prompts, each contributing its `num_samples_per_prompt` samples (times `num_particles` with
    `return_all_particles`).

    Example:

    ```python
    >>> from peft import LoraConfig
    >>> from trl_power import PowerDistillConfig, PowerDistillTrainer, PowerSamplingConfig, generate_power_dataset

    >>> teacher = generate_power_dataset(model, tokenizer, prompts, PowerSamplingConfig(method="smc", alpha=4.0))
    >>> trainer = PowerDistillTrainer(
    ...     model=model, args=PowerDistillConfig(output_dir="student"), train_dataset=teacher,
    ...     processing_class=tokenizer, peft_config=LoraConfig(target_modules="all-linear"),
    ... )
    >>> trainer.train()
    ```

    Args:
        model, args, data_collator, train_dataset, eval_dataset, processing_class, callbacks, optimizers,
        quantization_config, peft_config:
            As in [`~trl.SFTTrainer`]; `args` is a [`PowerDistillConfig`]. `eval_dataset` must hold teacher
            completions in both modes (its loss estimates the cross-entropy of p_alpha under the student).
        teacher_model (`str` or [`~transformers.PreTrainedModel`], *optional*):
            Online mode, non-PEFT student: the model whose power distribution is sampled (same tokenizer). Defaults to
            a frozen copy of the initial `model`. Not allowed with a PEFT student, whose teacher is its own base
            weights with the adapter disabled.

    Logged in online mode: `teacher/tokens_forwarded`, `teacher/seconds`, `teacher/base_logprob` (mean log p(y|x)
    of the teacher samples), `teacher/samples` and the sampler's `teacher/acceptance_rate` or `teacher/mean_ess`.
    With weights: `weight_ess`, the effective sample size (sum w)^2 / sum w^2 of each batch.
    """

    _tag_names = ["trl", "sft", "trl-power", "power-distillation"]
    _name = "Power Distill"
    _paper = POWER_PAPER

    def __init__(
        self,
        model: str | PreTrainedModel,
        args: PowerDistillConfig | None = None,
        data_collator: Any = None,
        train_dataset: Dataset | IterableDataset | None = None,
        eval_dataset: Any = None,
        processing_class: PreTrainedTokenizerBase | None = None,
        compute_loss_func: Callable | None = None,
        compute_metrics: Callable | None = None,
        callbacks: list[TrainerCallback] | None = None,
        optimizers: tuple[torch.optim.Optimizer | None, torch.optim.lr_scheduler.LambdaLR | None] = (
            None,
            None,
        ),
        optimizer_cls_and_kwargs: tuple[type[torch.optim.Optimizer], dict[str, Any]] | None = None,
        preprocess_logits_for_metrics: Callable | None = None,
        quantization_config: Any = None,
        peft_config: PeftConfig | None = None,
        formatting_func: Callable[[dict], str] | None = None,
        teacher_model: str | PreTrainedModel | None = None,
    ):
        check_private_hooks(SFTTrainer)
        args = _as_distill_config(args, model)
        if train_dataset is None:
            raise ValueError("`train_dataset` is required")

        self._online = args.sampling_config is not None
        self._eos_ids = _declared_eos_ids(model, processing_class)
        self._sampling_config = args.power_sampling_config
        self._check_teacher_data(args, train_dataset, eval_dataset, formatted=formatting_func is not None)
        self._weighted = "weight" in get_dataset_column_names(train_dataset) or self._online
        # non-uniform weights (particle sets), for the model card
        if self._online:
            self._particle_weights = bool(self._sampling_config.return_all_particles)
        else:
            self._particle_weights = _has_varying_weights(train_dataset)
        if self._weighted:
            args.check_weighted_loss_settings()
        if args.weight_sampling is None:  # the default: decided by the data's weights
            args.weight_sampling = self._particle_weights and not self._online
            if args.weight_sampling:
                logger.warning(
                    "weight_sampling: on. The 'weight' column of the train data set varies (particle weights); a "
                    "random batch of %d rows would count as %.1f rows (its mean effective sample size), so rows are "
                    "drawn with probability proportional to their weight and trained unweighted (the same expected "
                    "loss). Set weight_sampling=False for weighted batches.",
                    args.per_device_train_batch_size,
                    _expected_batch_ess(train_dataset["weight"], args.per_device_train_batch_size),
                )
        if args.weight_sampling and (
            self._online or not self._weighted or not hasattr(train_dataset, "__len__")
        ):
            raise ValueError(
                "weight_sampling draws the rows of a map-style data set with a `weight` column by their weights; this "
                "train data set is " + ("sampled online." if self._online else "unweighted or iterable.")
            )
        columns = get_dataset_column_names(train_dataset)
        if (
            args.completion_only_loss is None
            and args.use_sampled_ids
            and {"prompt_ids", "completion_ids"} <= set(columns)
            and "input_ids" not in columns
        ):
            # teacher rows as exact ids: the loss is on the completion (SFT decides it from `prompt` / `completion`
            # text columns, which a data set of ids alone lacks, and would train on the prompt tokens too)
            args.completion_only_loss = True
        if args.learning_rate is None:
            peft_student = peft_config is not None or (not isinstance(model, str) and is_peft_model(model))
            args.learning_rate = PEFT_LEARNING_RATE if peft_student else FULL_LEARNING_RATE
            logger.warning(
                "learning_rate not given: %s for a %s student.",
                args.learning_rate,
                "PEFT" if peft_student else "fully fine-tuned",
            )
        self._init_teacher(model, teacher_model, peft_config, args)

        super().__init__(
            model=model,
            args=args,
            data_collator=data_collator,
            train_dataset=train_dataset,
            eval_dataset=eval_dataset,
            processing_class=processing_class,
            compute_loss_func=compute_loss_func,
            compute_metrics=compute_metrics,
            callbacks=callbacks,
            optimizers=optimizers,
            optimizer_cls_and_kwargs=optimizer_cls_and_kwargs,
            preprocess_logits_for_metrics=preprocess_logits_for_metrics,
            quantization_config=quantization_config,
            peft_config=peft_config,
            formatting_func=formatting_func,
        )
        self.data_collator = _DistillCollator(self.data_collator)
        self._weighted_tokens_sum, self._rows_seen = 0.0, 0
        self._counting_training_batch = False
        self._weight_drawn_sampler: WeightDrawnSampler | None = None
        self._fixed_mean_weighted_tokens = (
            None if self._online else self._dataset_mean_weighted_tokens(self.train_dataset)
        )
        self._eval_mean_weighted_tokens: float | None = None  # m of the data set being evaluated
        # weight_sampling: rows drawn with probability w_i / sum w train unweighted; the divisor's mean length is then
        # m_w = sum_i w_i T_i / sum_i w_i = m * n / sum_i w_i.
        self._sampled_length_scale = (
            len(self.train_dataset) / float(np.sum(self.train_dataset["weight"]))
            if args.weight_sampling
            else 1.0
        )
        if self._teacher_model is not None:
            self._teacher_model.to(self.accelerator.device)

    # ----- data ------------------------------------------------------------------------------------------------------

    def _check_teacher_data(
        self, args: PowerDistillConfig, train_dataset: Any, eval_dataset: Any, formatted: bool
    ) -> None:
        """Clear errors before training: the data sets' columns (`validate_teacher_dataset`), the teacher's alpha
        against the config's, and particles weighted for the other target."""
        validate_teacher_dataset(
            train_dataset, "train", self._online, args.use_sampled_ids, formatted=formatted
        )
        self._dataset_metadata = power_dataset_metadata(train_dataset)
        columns = get_dataset_column_names(train_dataset)
        if self._dataset_metadata is None and {"prompt_ids", "completion_ids", "stats", "shard"} <= set(
            columns
        ):
            warnings.warn(
                "The train data set has the columns of generate_power_dataset but not its metadata (a data set pushed "
                "to the Hub and read back with datasets.load_dataset loses it), so its alpha and target are not "
                "checked and the model card cannot name its sampler. Load it with trl_power.load_power_dataset.",
                UserWarning,
                stacklevel=3,
            )
        self._check_alpha(args)
        sampled_target = ((self._dataset_metadata or {}).get("sampling_config") or {}).get("finished_only")
        if args.finished_only and sampled_target is False and _has_varying_weights(train_dataset):
            raise ValueError(
                "The teacher particles were weighted for the truncated target (finished_only=False); dropping their cut "
                "answers would leave each run weighted by its finished fraction. Sample them with finished_only=True, "
                "or distill with PowerDistillConfig(finished_only=False)."
            )
        eval_sets = (
            eval_dataset if isinstance(eval_dataset, dict) else {"eval": eval_dataset} if eval_dataset else {}
        )
        for key, dataset in eval_sets.items():
            validate_teacher_dataset(
                dataset,
                key,
                online=False,
                use_sampled_ids=args.use_sampled_ids,
                formatted=formatted,
            )

    def _init_teacher(
        self, model: Any, teacher_model: Any, peft_config: Any, args: PowerDistillConfig
    ) -> None:
        """The teacher of online mode. PEFT: the same weights with the adapter disabled (no copy). vLLM: an engine on
        the base checkpoint. Otherwise a frozen copy taken now, before SFTTrainer patches the model's forward (a later
        deepcopy would keep calling the original model through the patched forward's closure)."""
        will_be_peft = peft_config is not None or (not isinstance(model, str) and is_peft_model(model))
        self._teacher_model: torch.nn.Module | None = None
        self._teacher_llm: Any = None
        if teacher_model is not None and (not self._online or will_be_peft):
            raise ValueError(
                "teacher_model is only used in online mode with a non-PEFT student (a PEFT student's teacher is its "
                "base weights with the adapter disabled)."
            )
        if self._online and args.use_vllm:
            # The vLLM teacher loads the base weights from disk / the Hub (a PEFT student's base, teacher_model, or
            # the initial checkpoint): an in-memory model that differs from its checkpoint cannot be it.
            from trl_power.sampling.vllm_engine import load_vllm_for_processes

            source = teacher_model if teacher_model is not None else model
            if not isinstance(source, str):
                inner = source.get_base_model() if is_peft_model(source) else source
                source = inner.config._name_or_path
            self._teacher_llm = load_vllm_for_processes(source, **args.vllm_engine_kwargs())
        elif self._online and not will_be_peft:
            source = teacher_model if teacher_model is not None else model
            if isinstance(source, str):
                from transformers import AutoModelForCausalLM

                kwargs = dict(args.model_init_kwargs or {})
                kwargs.setdefault("dtype", torch.float32)
                self._teacher_model = AutoModelForCausalLM.from_pretrained(source, **kwargs)
            else:
                self._teacher_model = source if teacher_model is not None else copy.deepcopy(source)
            self._teacher_model.eval().requires_grad_(False)
        self._teacher_round = -1
        self._teacher_cache: dict[int, list[dict[str, Any]]] = {}  # prompt index -> teacher rows
        self._teacher_calls = 0

    def _prepare_dataset(self, dataset, processing_class, args, packing, formatting_func, dataset_name):
        columns = get_dataset_column_names(dataset)
        if self._online and not any(c in columns for c in _COMPLETION_COLUMNS):
            # Online prompts: tokenized like `generate_power_dataset` does; completions come in `get_batch_samples`.
            tokenizer = self._tokenizer

            def tokenize(example, index):
                return {"prompt_ids": tokenize_prompt(tokenizer, example["prompt"]), "prompt_index": index}

            return dataset.map(tokenize, with_indices=True)
        sampled_ids = (
            args.use_sampled_ids
            and {"prompt_ids", "completion_ids"} <= set(columns)
            and "input_ids" not in columns
        )
        if "finished" not in columns and sampled_ids:
            eos_ids = {*self._eos_ids, self._tokenizer.eos_token_id}
            stop_strings = ((self._dataset_metadata or {}).get("sampling_config") or {}).get("stop_strings")
            if stop_strings:  # the teacher's answers also ended at these (and were finished)
                eos_ids |= set(stop_token_ids(self._tokenizer, stop_strings))
            dataset = dataset.map(
                lambda ex: {"finished": bool(ex["completion_ids"]) and ex["completion_ids"][-1] in eos_ids}
            )
            columns = get_dataset_column_names(dataset)
        if args.finished_only and "finished" in columns:
            dataset = dataset.filter(lambda ex: bool(ex["finished"]))
            if hasattr(dataset, "__len__") and len(dataset) == 0:
                raise ValueError(
                    f"No row of the {dataset_name} data set is a finished answer (ends with EOS), and finished_only=True "
                    "drops the others. Sample with a larger max_new_tokens, or set finished_only=False to distill the "
                    "truncated target."
                )
        if sampled_ids:
            # Exact sampled ids: a pre-tokenized data set for SFTTrainer, which then builds the completion-only
            # labels and truncates to max_length as usual.
            weighted = "weight" in columns

            def to_ids(example):  # the teacher-row contract; SFTTrainer truncates to max_length
                out = training_example(example)
                return out if weighted else {k: v for k, v in out.items() if k != "weight"}

            dataset = dataset.map(to_ids, remove_columns=columns)
        dataset = super()._prepare_dataset(
            dataset, processing_class, args, packing, formatting_func, dataset_name
        )
        if not sampled_ids and "finished" in columns and not args.finished_only:
            # SFT appended EOS to every text completion; an answer cut at max_new_tokens ends without one.
            eos = self._tokenizer.eos_token_id

            def drop_appended_eos(example):
                if example["finished"] or not example["input_ids"] or example["input_ids"][-1] != eos:
                    return {}
                return {"input_ids": example["input_ids"][:-1], "labels": example["labels"][:-1]}

            dataset = dataset.map(drop_appended_eos)
        return dataset

    def _dataset_mean_weighted_tokens(self, dataset: Any) -> float | None:
        """m = (1/n) sum_i w_i T_i of a prepared map-style data set (None for iterable data or prompt rows)."""
        from datasets import Dataset

        if not isinstance(dataset, Dataset) or "labels" not in dataset.column_names or len(dataset) == 0:
            return None
        weights = dataset["weight"] if "weight" in dataset.column_names else [1.0] * len(dataset)
        tokens = [sum(label != -100 for label in labels[1:]) for labels in dataset["labels"]]
        return float(np.dot(np.asarray(weights, dtype=np.float64), tokens) / len(dataset))

    def _get_train_sampler(self, train_dataset=None):
        if not self.args.weight_sampling:
            return super()._get_train_sampler(train_dataset)
        dataset = train_dataset if train_dataset is not None else self.train_dataset
        seed = self.args.data_seed if self.args.data_seed is not None else self.args.seed
        # The same seed on every process: each draws the same row sequence, which Accelerate shards.
        self._weight_drawn_sampler = WeightDrawnSampler(dataset["weight"], len(dataset), seed)
        return self._weight_drawn_sampler

    def _weights_sampled(self, training: bool) -> bool:
        """Training batches whose rows were drawn by weight (`weight_sampling`): they count with weight 1. Evaluation
        batches keep their weights."""
        return self.args.weight_sampling and training

    def _set_signature_columns_if_needed(self):
        super()._set_signature_columns_if_needed()
        extra = ["weight", "prompt_ids", "prompt_index"]
        self._signature_columns = list(dict.fromkeys([*self._signature_columns, *extra]))

    # ----- online teacher ----------------------------------------------------------------------------------------------

    def get_batch_samples(self, epoch_iterator, num_batches, device):
        # Training batches only (evaluation counts its items in `prediction_step`). The Trainer calls this before
        # `training_step` puts the model in train mode, so `model.training` cannot tell the divisor which kind of
        # batch it counts: a student loaded in eval mode, or the first step after an evaluation, would get the
        # evaluation divisor. The flag says it instead.
        self._counting_training_batch = True
        try:
            batch_samples, num_items_in_batch = super().get_batch_samples(epoch_iterator, num_batches, device)
            if batch_samples and isinstance(batch_samples[0], list):  # online: prompt rows -> teacher batches
                batch_samples = self._teacher_batches(batch_samples)
                num_items_in_batch = self._get_num_items_in_batch(batch_samples, device)
        finally:
            self._counting_training_batch = False
        return batch_samples, num_items_in_batch

    def _teacher_batches(self, raw_batches: list[list[dict[str, Any]]]) -> list[dict[str, Any]]:
        """Completes each prompt row with its teacher samples of the current refresh round and collates."""
        refresh_round = self.state.global_step // self.args.teacher_refresh_steps
        if refresh_round != self._teacher_round:
            self._teacher_cache.clear()
            self._teacher_round = refresh_round
        needed: dict[int, list[int]] = {}
        for batch in raw_batches:
            for row in batch:
                if row["prompt_index"] not in self._teacher_cache:
                    needed[row["prompt_index"]] = list(row["prompt_ids"])
        if needed:
            self._draw_teacher(needed)
        batches = []
        for batch in raw_batches:
            examples = []
            for row in batch:
                for teacher_row in self._teacher_cache[row["prompt_index"]]:
                    example = training_example(teacher_row, self.args.max_length)
                    mask = example.pop("completion_mask")  # SFT's collator takes labels (-100: no loss)
                    example["labels"] = [t if m else -100 for t, m in zip(example["input_ids"], mask)]
                    examples.append(example)
            batches.append(self.data_collator(examples))
        return batches

    @torch.no_grad()
    def _draw_teacher(self, prompts: dict[int, list[int]]) -> None:
        """Teacher samples from p_alpha of the base model for the given {prompt index: prompt ids}."""
        base_seed = self._sampling_config.seed if self._sampling_config.seed is not None else self.args.seed
        config = replace(
            self._sampling_config,
            seed=derived_seed(
                base_seed, self._teacher_round, self.accelerator.process_index, self._teacher_calls
            ),
            show_progress=False,
        )
        self._teacher_calls += 1
        indices = list(prompts)
        if self._teacher_llm is not None:
            out = PowerSampler(self._teacher_llm, self._tokenizer, config).sample(
                [prompts[i] for i in indices]
            )
        elif self._teacher_model is not None:
            sampler = PowerSampler(self._teacher_model, self._tokenizer, config)
            out = sampler.sample([prompts[i] for i in indices])
        else:
            model = self.accelerator.unwrap_model(self.model)
            with adapter_disabled(model):
                out = PowerSampler(model, self._tokenizer, config).sample([prompts[i] for i in indices])
        ids = [prompts[i] for i in indices]
        rows = teacher_rows(out, ids, ids, config.num_samples_per_prompt)
        for i in indices:
            self._teacher_cache[i] = []
        for row in rows:
            self._teacher_cache[indices[row["prompt_index"]]].append(row)
        metrics = self._metrics["train"]
        runs = len(indices) * config.num_samples_per_prompt
        metrics["teacher/tokens_forwarded"].append(out.stats["tokens_forwarded"] / runs)
        metrics["teacher/seconds"].append(out.stats["seconds"] / runs)
        metrics["teacher/samples"].append(float(len(out)))
        w = np.asarray(out.weights if out.weights is not None else [1.0] * len(out))
        lp = np.asarray(out.base_logprobs)
        metrics["teacher/base_logprob"].append(float((w * lp).sum() / w.sum()))
        for key in ("acceptance_rate", "mean_ess"):
            if key in out.stats:
                metrics[f"teacher/{key}"].append(float(out.stats[key]))

    # ----- loss ------------------------------------------------------------------------------------------------------

    def _loss_tokens_and_weights(
        self, batch: dict[str, torch.Tensor], training: bool
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(T_i, w_i) of each row of a collated batch: completion tokens that carry loss, and the weight (1 if none,
        or if the rows of this training batch were drawn by weight)."""
        labels = batch["labels"]
        tokens = (labels[:, 1:] != -100).sum(1).float()
        weighted = "weight" in batch and not self._weights_sampled(training)
        weights = batch["weight"].float() if weighted else torch.ones_like(tokens)
        return tokens, weights

    def _observe_weighted_tokens(self, batches: list[dict[str, torch.Tensor]]) -> None:
        """Online / iterable data: the running mean of w_i T_i over the rows seen so far."""
        for batch in batches:
            tokens, weights = self._loss_tokens_and_weights(batch, training=True)
            self._weighted_tokens_sum += float((tokens * weights).sum())
            self._rows_seen += len(tokens)

    @property
    def mean_weighted_tokens(self) -> float:
        """m = (1/n) sum_i w_i T_i of the training data (a running mean for online or iterable data)."""
        if self._fixed_mean_weighted_tokens is not None:
            return self._fixed_mean_weighted_tokens
        return self._weighted_tokens_sum / max(1, self._rows_seen)

    def _row_divisor(self, training: bool) -> float:
        """The divisor per row of a training batch: m, or m_w = m * n / sum_i w_i for weight-drawn rows."""
        return self.mean_weighted_tokens * (
            self._sampled_length_scale if self._weights_sampled(training) else 1.0
        )

    def _get_num_items_in_batch(self, batch_samples, device):
        # The loss divisor of the accumulated batch (summed over processes when the parent does), see
        # `PowerDistillConfig.loss_normalizer`: b * m ("dataset_mean") or sum_i w_i T_i ("batch_tokens").
        num_items_in_batch = super()._get_num_items_in_batch(batch_samples, device)
        if not batch_samples or not isinstance(batch_samples[0], dict) or "labels" not in batch_samples[0]:
            return num_items_in_batch  # online prompt rows, before their teacher samples are drawn
        training = self._counting_training_batch
        if training and self._fixed_mean_weighted_tokens is None:
            # observed whatever the parent returns: for a model that takes no loss kwargs it returns None and
            # compute_loss divides by b * m with this running m
            self._observe_weighted_tokens(batch_samples)
        if num_items_in_batch is None or self.args.packing or self.args.padding_free:
            # packed / padding-free rows (unweighted data only) are one sequence per batch: SFT's token count
            return num_items_in_batch
        rows = [self._loss_tokens_and_weights(b, training) for b in batch_samples]
        if self.args.loss_normalizer == "dataset_mean":
            local = torch.tensor(sum(len(t) for t, _ in rows) * self._row_divisor(training), device=device)
        else:
            local = sum((t * w).sum() for t, w in rows).to(device)
        return self._as_parent_divisor(local)

    def evaluation_loop(self, dataloader, *args, **kwargs):
        # the mean weighted length of the data set this loop evaluates (the divisor of its batches, compute_loss)
        self._eval_mean_weighted_tokens = self._dataset_mean_weighted_tokens(
            getattr(dataloader, "dataset", None)
        )
        try:
            return super().evaluation_loop(dataloader, *args, **kwargs)
        finally:
            self._eval_mean_weighted_tokens = None

    def _run_epoch(self, *args, epoch: int, **kwargs):
        # Epoch e's weight-sampled rows are drawn from (seed, e): set here, for every loader nesting (accelerate's
        # set_epoch does not reach the sampler under the batch skipper of a resumed multi-process run)
        if self._weight_drawn_sampler is not None:
            self._weight_drawn_sampler.set_epoch(epoch)
        return super()._run_epoch(*args, epoch=epoch, **kwargs)

    def _as_parent_divisor(self, local: torch.Tensor) -> torch.Tensor:
        """A local divisor summed over processes and split over non-data-parallel ranks as the parent does."""
        if self.args.average_tokens_across_devices and self.args.world_size > 1:
            local = self.accelerator.gather(local).sum()
        return local / (self.get_tp_size() * self.get_cp_size() * self.get_sp_size())

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        if "weight" not in inputs:
            return super().compute_loss(model, inputs, return_outputs, num_items_in_batch)
        # compute_loss runs after training_step's model.train() (or in evaluation, in eval mode): the mode is right
        training = model.training
        weight = torch.ones_like(inputs["weight"]) if self._weights_sampled(training) else inputs["weight"]
        inputs = {k: v for k, v in inputs.items() if k != "weight"}
        # Weighted NLL. SFTTrainer's loss is sum(-log p) / token count with no per-sequence factor to hook into, so
        # the weighted case runs the same fused forward and reduction here, with w_i on each sequence's tokens.
        mode = "train" if training else "eval"
        inputs["use_cache"] = False
        outputs = model(**inputs, fused_lm_head=True)
        w = weight.to(outputs.log_probs.device, outputs.log_probs.dtype)[:, None]
        per_token_loss = -outputs.log_probs * w
        if self.args.loss_type == "dft":
            per_token_loss = per_token_loss * outputs.log_probs.exp().detach()
        mask = outputs.label_mask
        if num_items_in_batch is not None:
            divisor = num_items_in_batch
        elif self.args.loss_normalizer == "dataset_mean" and not training and self._eval_mean_weighted_tokens:
            # SFT's prediction_step passes no count: an evaluation batch is divided by b * m_eval, m_eval the mean
            # w_i T_i of the data set evaluated, so that the evaluation's mean loss is its L
            divisor = w.numel() * self._eval_mean_weighted_tokens
        elif self.args.loss_normalizer == "dataset_mean" and training and self.mean_weighted_tokens > 0:
            divisor = w.numel() * self._row_divisor(training)
        else:
            divisor = (mask * w).sum()
        loss = per_token_loss.sum() / torch.as_tensor(divisor).clamp(min=1e-12)
        if self.args.average_tokens_across_devices and num_items_in_batch is not None:
            loss = loss * (self.accelerator.num_processes // self.get_tp_size())

        metrics = self._metrics[mode]
        num_valid = self.accelerator.gather_for_metrics(mask.sum()).sum()
        entropy = self.accelerator.gather_for_metrics(outputs.entropy.detach().sum()).sum()
        correct = self.accelerator.gather_for_metrics(outputs.is_top1.sum()).sum()
        metrics["entropy"].append((entropy / num_valid).item() if num_valid > 0 else 0.0)
        metrics["mean_token_accuracy"].append((correct / num_valid).item() if num_valid > 0 else 0.0)
        all_w = self.accelerator.gather_for_metrics(weight.to(mask.device))
        metrics["weight_ess"].append(effective_sample_size(all_w.double().cpu().numpy()))
        if mode == "train":
            tokens = self.accelerator.gather_for_metrics(inputs["attention_mask"].sum()).sum().item()
            self._total_train_tokens += tokens // self._tp_size
        metrics["num_tokens"] = [self._total_train_tokens]
        if return_outputs:
            with torch.no_grad():
                outputs = model(**{k: v for k, v in inputs.items() if k != "labels"})
            return loss, outputs
        return loss

    # ----- model card ------------------------------------------------------------------------------------------------

    def _check_alpha(self, args: PowerDistillConfig) -> None:
        meta_alpha = (self._dataset_metadata or {}).get("alpha")
        if args.alpha is not None and meta_alpha is not None and not math.isclose(args.alpha, meta_alpha):
            raise ValueError(
                f"PowerDistillConfig.alpha={args.alpha} but the teacher data set was generated with alpha={meta_alpha}."
            )

    def distillation_record(self, dataset_name: str | None = None) -> dict[str, Any]:
        """What the model card records: alpha, sampler, teacher model, data set, mode."""
        meta = self._dataset_metadata or {}
        if self._online:
            sampling = self.args.sampling_config
            teacher = (
                get_config_model_id(self._teacher_model.config)
                if self._teacher_model is not None
                else get_config_model_id(self.accelerator.unwrap_model(self.model).config)
            )
        else:
            sampling = meta.get("sampling_config")
            teacher = meta.get("model")
        alpha = self.args.alpha if self.args.alpha is not None else meta.get("alpha")
        train = self.train_dataset
        return {
            "mode": "online" if self._online else "offline",
            "alpha": alpha,
            "sampler": (sampling or {}).get("method"),
            "sampling_config": sampling,
            "teacher_model": teacher,
            "teacher_is_base_with_adapter_disabled": self._online and self._teacher_model is None,
            "dataset": dataset_name or meta.get("hub_dataset_id"),
            "dataset_rows": len(train) if hasattr(train, "__len__") else None,
            "weighted": self._particle_weights,
            "teacher_refresh_steps": self.args.teacher_refresh_steps if self._online else None,
        }

    def create_model_card(
        self,
        model_name: str | None = None,
        dataset_name: str | None = None,
        tags: str | list[str] | None = None,
    ):
        """TRL's model card, plus a `trl_power` metadata entry and a section on the power distillation."""
        if not self.is_world_process_zero():
            return
        record = self.distillation_record(dataset_name)
        super().create_model_card(model_name=model_name, dataset_name=record["dataset"], tags=tags)
        from huggingface_hub import ModelCard

        path = os.path.join(self.args.output_dir, "README.md")
        card = ModelCard.load(path)
        card.data.trl_power = {k: v for k, v in record.items() if k != "sampling_config"}
        sampling = json.dumps(record["sampling_config"], indent=1, sort_keys=True)
        card.text += (
            textwrap.dedent(
                f"""

            ## Power self-distillation

            This model was trained with `trl-power`'s `PowerDistillTrainer` to imitate the power distribution
            p_alpha(y|x) ∝ p(y|x)^alpha of its teacher (min KL(p_alpha || student) by maximum likelihood on teacher
            samples).

            - alpha: {record["alpha"]}
            - sampler: {record["sampler"]} ({record["mode"]} mode{", teacher = base weights with the adapter disabled" if record["teacher_is_base_with_adapter_disabled"] else ""})
            - teacher model: {record["teacher_model"]}
            - data set: {record["dataset"]} ({record["dataset_rows"]} rows{", weighted particles" if record["weighted"] else ""})

            Sampling configuration:

            ```json
            """
            )
            + sampling
            + "\n```\n"
        )
        card.save(path)


__all__ = ["PowerDistillTrainer", "validate_teacher_dataset"]
