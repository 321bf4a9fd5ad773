"""The `trl-power` command (also `python -m trl_power`).

    trl-power sample       --config CONFIG.yaml [--accelerate_config NAME_OR_PATH] [accelerate options] [fields]
    trl-power self-reward  ...                  (recipes/power_self_reward.py)
    trl-power distill      ...                  (recipes/power_distill.py)
    trl-power eval         ...                  (recipes/evaluate.py)
    trl-power diagnose     --dataset_name ANSWERS --alpha 4      (recipes/diagnose.py, in this process)
    trl-power demo

As with `trl sft`, `sample`, `self-reward`, `distill` and `eval` parse the recipe's arguments here (so a bad config
fails before anything is launched) and then run the recipe script through `accelerate launch`. Options the recipe does
not know are `accelerate launch` options (`--num_processes 8`, `--main_process_port ...`), from the command line or
the YAML config; `--accelerate_config` names one of the configs in `accelerate_configs/` (single_gpu, multi_gpu,
fsdp2, zero2, zero3, multi_cpu) or a path to an accelerate config file.
"""

from __future__ import annotations

import argparse
import importlib.util
import subprocess
import sys
from pathlib import Path
from types import ModuleType

#: command -> recipe script; `diagnose` runs in this process (no model, no launcher).
RECIPES = {
    "sample": (
        "power_sample.py",
        "Power-sample a prompt data set (teacher data or answers); sharded, resumable.",
    ),
    "self-reward": ("power_self_reward.py", "Self-reward RL towards p^alpha (PowerSelfRewardTrainer)."),
    "distill": (
        "power_distill.py",
        "Power self-distillation of a student, e.g. a LoRA adapter (PowerDistillTrainer).",
    ),
    "eval": (
        "evaluate.py",
        "Accuracy, pass@k, self-reward and cost of a sampler on a data set with a verifier.",
    ),
    "diagnose": (
        "diagnose.py",
        "Covariance diagnostic: will power sampling raise the reward? (scored base samples)",
    ),
}
IN_PROCESS = ("diagnose",)


def resource_dir(name: str) -> Path:
    """`recipes` or `accelerate_configs`: shipped in the package, or next to it in a source checkout."""
    here = Path(__file__).resolve().parent
    for candidate in (here / name, here.parent / name):
        if candidate.is_dir():
            return candidate
    raise FileNotFoundError(
        f"Cannot find the {name}/ folder of trl-power (looked in {here} and {here.parent})."
    )


def accelerate_config_names() -> list[str]:
    return sorted(p.stem for p in resource_dir("accelerate_configs").glob("*.yaml"))


def load_recipe(command: str) -> ModuleType:
    """The recipe module of `command`, imported from its file (its folder first on sys.path, as when run)."""
    folder = resource_dir("recipes")
    if str(folder) not in sys.path:
        sys.path.insert(0, str(folder))
    path = folder / RECIPES[command][0]
    spec = importlib.util.spec_from_file_location(f"trl_power_recipe_{path.stem}", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses resolve their annotations through it
    spec.loader.exec_module(module)
    return module


def resolve_accelerate_config(launch_args: list[str]) -> list[str]:
    """`--accelerate_config NAME_OR_PATH` -> `--config_file PATH` (names: the files of accelerate_configs/)."""
    args = list(launch_args)
    for i, token in enumerate(args):
        if token == "--accelerate_config" or token.startswith("--accelerate_config="):
            value = token.split("=", 1)[1] if "=" in token else (args[i + 1] if i + 1 < len(args) else None)
            if value is None:
                raise ValueError("--accelerate_config needs a value: a config name or a file path.")
            path = Path(value).expanduser()
            if not path.is_file():
                path = resource_dir("accelerate_configs") / f"{value}.yaml"
                if not path.is_file():
                    raise ValueError(
                        f"--accelerate_config {value!r} is neither a file nor one of {accelerate_config_names()}."
                    )
            rest = args[:i] + args[i + (1 if "=" in token else 2) :]
            return ["--config_file", str(path), *rest]
    return args


def _subtract_subsequence(items: list[str], subsequence: list[str]) -> list[str]:
    """`items` without the ordered `subsequence` (the launcher options the recipe must not see)."""
    out, it = [], iter(subsequence)
    current = next(it, None)
    for item in items:
        if current is not None and item == current:
            current = next(it, None)
        else:
            out.append(item)
    return out


def launch_arguments(command: str, argv: list[str]) -> list[str]:
    """The `accelerate launch` command line running `command`'s recipe with `argv`, after checking `argv` (and its
    `--config` file) with the recipe's own parser: unknown fields and invalid values fail here, before launching."""
    recipe = load_recipe(command)
    parser = recipe.make_parser(prog=f"trl-power {command}")
    parser.epilog = _LAUNCHER_HELP.format(names=", ".join(accelerate_config_names()))
    from recipe_utils import split_args  # importable once the recipe is loaded

    _, config_rest, cli_rest = split_args(parser, argv)  # exits on --help
    launch_args = resolve_accelerate_config(config_rest + cli_rest)
    script_args = _subtract_subsequence(argv, cli_rest)
    return [*launch_args, str(resource_dir("recipes") / RECIPES[command][0]), *script_args]


_LAUNCHER_HELP = """launcher options (given to `accelerate launch`, from the command line or the YAML config):
  --accelerate_config NAME_OR_PATH
                        accelerate config: one of {names} (accelerate_configs/), or a file
                        (default: accelerate's own default config)
  --num_processes N, --main_process_port PORT, ...
                        any other `accelerate launch` option (see `accelerate launch --help`)"""


def _run_accelerate(accelerate_argv: list[str]) -> None:
    from accelerate.commands.launch import launch_command, launch_command_parser

    launch_command(launch_command_parser().parse_args(accelerate_argv))


def _demo(args: argparse.Namespace) -> int:
    from trl_power.demo import run_demo

    run_demo(args)
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="trl-power", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for command, (_, help_text) in RECIPES.items():
        sub.add_parser(command, help=help_text, add_help=False)  # the recipe's parser handles the arguments
    from trl_power.demo import add_demo_arguments

    demo = sub.add_parser(
        "demo",
        help="Power sampling, self-distillation and self-reward RL on the embedded tasks (offline, CPU, minutes).",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    add_demo_arguments(demo)
    demo.set_defaults(func=_demo)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    args, _ = parser.parse_known_args(argv)
    if args.command not in RECIPES:
        return parser.parse_args(argv).func(args)
    rest = argv[argv.index(args.command) + 1 :]
    try:
        if args.command in IN_PROCESS:
            recipe = load_recipe(args.command)
            from recipe_utils import parse_args

            recipe.main(*parse_args(recipe.make_parser(prog=f"trl-power {args.command}"), rest))
        else:
            _run_accelerate(launch_arguments(args.command, rest))
    except (ValueError, FileNotFoundError) as e:
        parser.exit(2, f"trl-power {args.command}: error: {e}\n")
    except subprocess.CalledProcessError as e:  # the recipe failed; its traceback is above
        return e.returncode
    return 0


if __name__ == "__main__":
    sys.exit(main())
