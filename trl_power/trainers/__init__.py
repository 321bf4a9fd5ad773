"""TRL trainers whose target is the power distribution."""

import textwrap

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
