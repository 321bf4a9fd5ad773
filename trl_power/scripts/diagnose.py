"""Before paying for power sampling: will sharpening to p^alpha raise the accuracy? The covariance diagnostic.

    trl-power diagnose --dataset_name outputs/tiny/eval_plain/answers.jsonl --alpha 4
    python recipes/diagnose.py --dataset_name outputs/tiny/eval_plain/answers.jsonl --alpha 4

d/d alpha E_{p_alpha}[r] = Cov_{p_alpha}(r, log p), so E_{p_alpha}[r] - E_p[r] = integral_1^alpha Cov_{p_s}(r, log p) ds,
estimated from plain samples of the base model with self-normalised weights p^(s-1), per prompt, with a bootstrap
interval (`trl_power.diagnostic.covariance_diagnostic`). The data set holds base samples, several per prompt: a
reward column (or a `verifier` to compute it) and their log p(y|x) (`base_logprob`). `recipes/evaluate.py` with
`method: temperature` writes such a data set (`answers.jsonl`) and runs this diagnostic itself; any other data set of
samples with those columns works too. No model is loaded: this runs in seconds on a CPU.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from trl_power.diagnostic import covariance_diagnostic
from trl_power.scripts.utils import (
    PowerScriptArguments,
    build_parser,
    load_data,
    load_verifier,
    run_script,
    write_json,
)


@dataclass
class DiagnoseConfig:
    """What to read from the data set and how to estimate.

    Args:
        alpha: The power whose effect is predicted (> 1).
        reward_column: Column of the rewards (1 right, 0 wrong). When the data set has none, `verifier` computes them
            from `prompt` and `completion`.
        logprob_column: Column of log p(y|x) of each sample under the base model (sequence sums).
        group_column: Column telling which prompt a sample answers (the estimate is per prompt).
        num_points: Grid points on [1, alpha] for the covariance curve.
        bootstrap: Bootstrap replicates for the interval (0: none).
        confidence: Level of the interval.
        seed: Seed of the bootstrap.
        output_file: Where to write the diagnostic as JSON (`None`: only printed).
    """

    alpha: float = field(default=4.0, metadata={"help": "The power whose effect is predicted (> 1)."})
    reward_column: str = field(default="reward", metadata={"help": "Column of the rewards."})
    logprob_column: str = field(
        default="base_logprob", metadata={"help": "Column of log p(y|x) under the base model."}
    )
    group_column: str = field(
        default="prompt_index", metadata={"help": "Column saying which prompt a sample answers."}
    )
    num_points: int = field(default=65, metadata={"help": "Grid points on [1, alpha]."})
    bootstrap: int = field(default=200, metadata={"help": "Bootstrap replicates (0: no interval)."})
    confidence: float = field(default=0.9, metadata={"help": "Level of the bootstrap interval."})
    seed: int = field(default=0, metadata={"help": "Seed of the bootstrap."})
    output_file: str | None = field(default=None, metadata={"help": "Write the diagnostic as JSON here."})


def main(script_args: PowerScriptArguments, config: DiagnoseConfig) -> dict:
    data = load_data(script_args, script_args.dataset_train_split)
    if config.reward_column in data.column_names:
        rewards = [float(r) for r in data[config.reward_column]]
    elif script_args.verifier is not None:
        for column in ("prompt", "completion"):
            if column not in data.column_names:
                raise ValueError(
                    f"The data set has no {column!r} column to verify; its columns: {data.column_names}."
                )
        rewards = load_verifier(script_args, data).rewards(data["prompt"], data["completion"])
    else:
        raise ValueError(
            f"The data set has no reward column {config.reward_column!r} (columns: {data.column_names}): set "
            "reward_column, or a verifier to compute the rewards."
        )
    for column in (config.logprob_column, config.group_column):
        if column not in data.column_names:
            raise ValueError(f"The data set has no column {column!r}; its columns are {data.column_names}.")
    groups = [g if isinstance(g, str | int | float) else str(g) for g in data[config.group_column]]
    diagnostic = covariance_diagnostic(
        rewards,
        data[config.logprob_column],
        alpha=config.alpha,
        num_points=config.num_points,
        bootstrap=config.bootstrap,
        groups=groups,
        confidence=config.confidence,
        seed=config.seed,
    )
    print(diagnostic.message)
    result = diagnostic.to_dict()
    if config.output_file:
        write_json(config.output_file, result)
    return result


def make_parser(prog: str | None = None):
    return build_parser(PowerScriptArguments, DiagnoseConfig, prog=prog, description=__doc__)


if __name__ == "__main__":
    run_script(main, make_parser)
