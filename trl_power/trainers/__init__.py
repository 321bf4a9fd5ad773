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
