"""What the trainers share: the paper their model cards cite, the CPU float32 fallback of TRL's bf16 default, and the
private TRL / transformers hooks they override, with the TRL versions those hooks are verified on.

Private hooks are not API: a TRL release may rename them, change their arguments or the order in which the parent
calls them. `check_private_hooks` runs when a trainer is built and fails at once, naming the hook, when the installed
TRL lacks one or has changed its parameters, instead of training towards a wrong target in silence.
`SUPPORTED_TRL` is the range whose sources were read and found to have every hook below with these parameters and the
call order the trainers rely on (RLOO: the policy, then the reference scoring pass, then `_calculate_rewards`, inside
`_generate_and_score_completions`): 1.10.0, 1.12.0, 1.14.0, 1.15.0 read, 1.16.0 read and tested (requirements/lock.txt).
"""

from __future__ import annotations

import inspect
import textwrap
import warnings

# The paper every trainer's model card cites (TRL's `_paper` convention).
POWER_PAPER = {
    "title": "Power Distribution Bridges Sampling, Self-Reward RL, and Self-Distillation",
    "id": "2605.04542",
    # docstyle-ignore
    "citation": textwrap.dedent("""\
        @article{tomihari2026power,
            title         = {{Power Distribution Bridges Sampling, Self-Reward RL, and Self-Distillation}},
            author        = {Tomihari and Sato},
            year          = 2026,
            eprint        = {2605.04542},
            archivePrefix = {arXiv},
        }"""),
}


def default_to_float32_without_bf16(args) -> None:
    """Called at the start of a config's `__post_init__`. TRL turns bf16 on by default, and transformers then refuses
    to build the config on a machine without a bf16-capable accelerator unless `use_cpu=True`: fall back to float32
    there, so that the default config (and TRL's quick starts) work on a CPU-only machine. Explicit settings are
    left alone."""
    from transformers.utils import is_torch_bf16_gpu_available, is_torch_xla_available

    unset = args.bf16 is None and not args.fp16 and not args.use_cpu
    if unset and not (is_torch_bf16_gpu_available() or is_torch_xla_available()):
        args.bf16 = False


#: TRL versions whose private hooks (below) the trainers are verified against (see the module docstring).
SUPPORTED_TRL = (">=1.10", "<1.17")

#: {parent class name: {hook: its parameters after self, as the trainers call or override it}}. The classes are
#: TRL's (RLOOTrainer, SFTTrainer) and transformers' Trainer (reached through SFTTrainer).
PRIVATE_HOOKS: dict[str, dict[str, tuple[str, ...]]] = {
    "RLOOTrainer": {
        # wrapped: collects this batch's two scoring passes (policy, reference) for the self-reward
        "_generate_and_score_completions": ("inputs",),
        # the reference pass returns the power target's per-token "reference" log-probs
        "_get_per_token_logps_and_entropies": ("model", "input_ids", "attention_mask", "logits_to_keep"),
        # adds the self-reward / total / covariance metrics next to TRL's reward metrics
        "_calculate_rewards": ("inputs", "prompts", "completions", "completion_ids_list"),
        # called, not overridden: the self-reward column of the completions table
        "_log_completion_extra": ("column", "values"),
    },
    "SFTTrainer": {
        # exact sampled ids, prompt/completion text with EOS only on finished answers, online prompt rows
        "_prepare_dataset": (
            "dataset",
            "processing_class",
            "args",
            "packing",
            "formatting_func",
            "dataset_name",
        ),
        # keeps the weight / prompt_ids / finished columns
        "_set_signature_columns_if_needed": (),
        # transformers' Trainer: the online teacher samples the batches drawn for one optimizer step
        "get_batch_samples": ("epoch_iterator", "num_batches", "device"),
        # transformers' Trainer: weight_sampling draws the rows by their weights
        "_get_train_sampler": ("train_dataset",),
        # transformers' Trainer: the weighted loss's divisor (the data set's mean weighted length)
        "_get_num_items_in_batch": ("batch_samples", "device"),
        # transformers' Trainer: the epoch of the weight-sampled rows' draws
        "_run_epoch": ("model", "epoch"),
    },
}


def check_private_hooks(parent: type, name: str | None = None) -> None:
    """Raise a `RuntimeError` naming the hook when `parent` (a TRL trainer class) lacks one of the private methods of
    `PRIVATE_HOOKS[name]` or takes other leading parameters; warn when the installed TRL is outside `SUPPORTED_TRL`."""
    import trl
    from packaging.version import Version

    name = name or parent.__name__
    low, high = (Version(v.lstrip("<>=")) for v in SUPPORTED_TRL)
    supported = f"trl{SUPPORTED_TRL[0]},{SUPPORTED_TRL[1]}"
    for hook, expected in PRIVATE_HOOKS[name].items():
        method = getattr(parent, hook, None)
        if method is None:
            raise RuntimeError(
                f"The installed TRL {trl.__version__} has no {name}.{hook}, which trl-power's trainer overrides. "
                f"trl-power's trainers are verified on {supported}: install a TRL in that range."
            )
        params = [p for p in inspect.signature(method).parameters if p != "self"]
        if tuple(params[: len(expected)]) != expected:
            raise RuntimeError(
                f"{name}.{hook} of the installed TRL {trl.__version__} takes ({', '.join(params)}), not "
                f"({', '.join(expected)}) as trl-power's trainer expects. trl-power's trainers are verified on "
                f"{supported}: install a TRL in that range."
            )
    if not low <= Version(trl.__version__) < high:
        warnings.warn(
            f"trl-power's trainers override private hooks of {name} verified on {supported}; the installed TRL is "
            f"{trl.__version__}. Their signatures match, but check the results (tests/test_trl_compat.py).",
            stacklevel=3,
        )


#: The settings of a quick offline training run on a CPU (the demo, the tests, the benchmarks): no checkpoints, no
#: trackers, float32, no gradient checkpointing, no progress bars, and the CPU even under `accelerate launch` (without
#: `use_cpu`, `--multi_gpu` on a machine without a GPU starts unrelated single processes). `**CPU_RUN` in a config.
CPU_RUN = dict(
    save_strategy="no",
    report_to="none",
    bf16=False,
    gradient_checkpointing=False,
    disable_tqdm=True,
    use_cpu=True,
)
