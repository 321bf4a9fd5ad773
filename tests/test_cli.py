"""The `trl-power` command: help, argument checking before launch, `accelerate launch` command lines, one real run."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from importlib import resources
from pathlib import Path

import pytest
import yaml

from trl_power import cli

ROOT = Path(__file__).resolve().parents[1]
TINY = ROOT / "recipes" / "configs" / "tiny"
LAUNCHED = ["sample", "self-reward", "distill", "eval"]
SCRIPTS = cli.script_commands()
spec = importlib.util.spec_from_file_location("sync_configs", ROOT / "tools" / "sync_accelerate_configs.py")
sync_configs = importlib.util.module_from_spec(spec)
spec.loader.exec_module(sync_configs)
OURS = {name.removesuffix(".yaml") for name in sync_configs.OWN}


@pytest.fixture
def launches(monkeypatch) -> list[list[str]]:
    """Record the `accelerate launch` command lines instead of running them."""
    calls: list[list[str]] = []
    monkeypatch.setattr(cli, "_run_accelerate", calls.append)
    return calls


def test_top_level_help_lists_every_command(capsys):
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["--help"])
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    for command in [*SCRIPTS, "demo"]:
        assert command in out


@pytest.mark.parametrize("command", list(SCRIPTS))
def test_recipe_help_shows_every_option_with_its_default(command, capsys):
    with pytest.raises(SystemExit) as exit_info:
        cli.main([command, "--help"])
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    assert out.startswith(f"usage: trl-power {command}")
    parser = SCRIPTS[command].module().make_parser()
    options = [a for a in parser._actions if a.dest not in ("help", "config")]
    for action in options:
        assert action.help, f"--{action.dest} has no description"
        assert f"--{action.dest}" in out
    assert out.count("(default:") >= len(options)
    if command != "diagnose":
        assert "--accelerate_config NAME_OR_PATH" in out and "multi_cpu" in out


def test_launch_command_line(launches, tmp_path):
    """Recipe fields go to the recipe, launcher options (command line or YAML) to `accelerate launch`."""
    config = {**yaml.safe_load((TINY / "eval_power.yaml").read_text()), "num_processes": 2}
    (tmp_path / "eval.yaml").write_text(yaml.safe_dump(config))
    argv = ["--config", str(tmp_path / "eval.yaml"), "--max_prompts", "3", "--accelerate_config", "multi_cpu"]
    argv += ["--main_process_port", "29777"]
    assert cli.main(["eval", *argv]) == 0
    (launch,) = launches
    script = launch.index(str(ROOT / "trl_power" / "scripts" / "evaluate.py"))
    assert launch[:2] == ["--config_file", str(ROOT / "accelerate_configs" / "multi_cpu.yaml")]
    assert sorted(launch[2:script]) == sorted(["--num_processes", "2", "--main_process_port", "29777"])
    assert launch[script + 1 :] == ["--config", str(tmp_path / "eval.yaml"), "--max_prompts", "3"]


@pytest.mark.parametrize("command", LAUNCHED)
def test_every_training_command_launches_its_recipe(command, launches):
    config = {"sample": "sample", "self-reward": "self_reward", "distill": "distill", "eval": "eval_power"}[
        command
    ]
    assert cli.main([command, "--config", str(TINY / f"{config}.yaml")]) == 0
    (launch,) = launches
    assert launch[0] == SCRIPTS[command].script_path()
    assert Path(launch[0]).parent == ROOT / "trl_power" / "scripts"
    assert launch[1:] == ["--config", str(TINY / f"{config}.yaml")]


def test_accelerate_config_names_and_paths():
    """Every config of accelerate_configs/ by name (our single_gpu: one process, where TRL's sets 8; multi_cpu: two
    gloo processes; TRL's multi_gpu, fsdp1/2, zero1/2/3 copied), any file by path, both option spellings."""
    names = cli.accelerate_config_names()
    assert {"single_gpu", "multi_cpu", "multi_gpu", "fsdp1", "fsdp2", "zero1", "zero2", "zero3"} <= set(names)
    for name in names:
        path = ROOT / "accelerate_configs" / f"{name}.yaml"
        assert cli.resolve_accelerate_config(["--accelerate_config", name, "--x"]) == [
            "--config_file",
            str(path),
            "--x",
        ]
        assert cli.resolve_accelerate_config([f"--accelerate_config={path}"]) == ["--config_file", str(path)]
        if name in OURS:
            settings = yaml.safe_load(path.read_text())
            assert settings["num_processes"] == {"single_gpu": 1, "multi_cpu": 2}[name]
            assert settings["use_cpu"] == (name == "multi_cpu")
    trl_single_gpu = resources.files("trl.accelerate_configs").joinpath("single_gpu.yaml").read_text()
    assert yaml.safe_load(trl_single_gpu)["num_processes"] == 8  # why ours exists
    with pytest.raises(ValueError, match="neither a file nor one of"):
        cli.resolve_accelerate_config(["--accelerate_config", "zero4"])
    with pytest.raises(ValueError, match="needs a value"):
        cli.resolve_accelerate_config(["--accelerate_config"])


def test_trl_accelerate_configs_are_copied_unchanged():
    """accelerate_configs/ holds every config the installed TRL ships (but single_gpu, ours), byte for byte
    (tools/sync_accelerate_configs.py rewrites them after a TRL bump)."""
    copies = sync_configs.trl_configs()
    assert {
        "multi_gpu.yaml",
        "fsdp1.yaml",
        "fsdp2.yaml",
        "zero1.yaml",
        "zero2.yaml",
        "zero3.yaml",
    } <= copies.keys()
    for name, data in copies.items():
        assert (ROOT / "accelerate_configs" / name).read_bytes() == data, (
            f"{name}: run tools/sync_accelerate_configs.py"
        )


# what `accelerate launch` makes of each config: processes, launcher, and the ZeRO stage / FSDP version
LAUNCH_SETTINGS = {
    "single_gpu": (1, "single", None),
    "multi_cpu": (2, "multi_gpu", None),
    "multi_gpu": (8, "multi_gpu", None),
    "fsdp1": (8, "fsdp", 1),
    "fsdp2": (8, "fsdp", 2),
    "zero1": (8, "deepspeed", 1),
    "zero2": (8, "deepspeed", 2),
    "zero3": (8, "deepspeed", 3),
}


@pytest.mark.parametrize("name", sorted(LAUNCH_SETTINGS))
def test_accelerate_launch_parses_each_config(name):
    """`accelerate launch --config_file accelerate_configs/<name>.yaml recipes/power_distill.py ...` as accelerate
    reads it: its own argument parser, then the config-file merge (`_validate_launch_command`, the step before it
    picks a launcher). Catches a file accelerate cannot read, a missing one, and a config that launches otherwise
    than its name says."""
    from accelerate.commands.launch import _validate_launch_command, launch_command_parser

    script = str(ROOT / "recipes" / "power_distill.py")
    argv = ["--config_file", str(ROOT / "accelerate_configs" / f"{name}.yaml"), script, "--max_steps", "1"]
    args, _, _ = _validate_launch_command(launch_command_parser().parse_args(argv))
    processes, launcher, level = LAUNCH_SETTINGS[name]
    flags = {"multi_gpu": args.multi_gpu, "fsdp": args.use_fsdp, "deepspeed": args.use_deepspeed}
    assert args.num_processes == processes
    assert {k for k, v in flags.items() if v} == ({launcher} if launcher != "single" else set())
    assert args.use_cpu == (name == "multi_cpu")
    if launcher == "fsdp":
        assert int(args.fsdp_version) == level
    if launcher == "deepspeed":
        assert int(args.zero_stage) == level
    assert (args.training_script, args.training_script_args) == (script, ["--max_steps", "1"])


def test_the_trl_cli_helpers_we_reuse_behave_as_we_rely_on():
    """`trl.cli` helpers are reused, one of them private (`_subtract_subsequence`): a TRL release that changes them
    fails here, by name, rather than in a launch."""
    from trl.cli.commands.base import Command, CommandContext
    from trl.cli.commands.training import _subtract_subsequence

    assert _subtract_subsequence(["a", "--n", "2", "b", "--n"], ["--n", "2"]) == ["a", "b", "--n"]
    assert CommandContext(argv=["x", "eval", "--a"]).argv_after("eval") == ["--a"]
    assert all(isinstance(c, Command) for c in cli.get_commands())


def test_bad_config_fails_before_anything_is_launched(launches, tmp_path, capsys):
    config = {**yaml.safe_load((TINY / "eval_power.yaml").read_text()), "mcmc_stepz": 3}
    (tmp_path / "bad.yaml").write_text(yaml.safe_dump(config))
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["eval", "--config", str(tmp_path / "bad.yaml")])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert (
        "trl-power eval: error: Unknown field(s) in the config file: 'mcmc_stepz' (did you mean 'mcmc_steps'?)"
        in err
    )
    with pytest.raises(SystemExit):
        cli.main(["eval", "--config", str(TINY / "eval_power.yaml"), "--accelerate_config", "zero4"])
    assert "neither a file nor one of" in capsys.readouterr().err
    assert launches == []


def test_cli_runs_a_recipe_through_accelerate_launch(tmp_path):
    """`trl-power sample` for real: the recipe script under `accelerate launch` (one process)."""
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text("".join(json.dumps({"prompt": p}) + "\n" for p in ["sum 1 2 3 4 :", "sum 9 9 9 9 :"]))
    command = [sys.executable, "-m", "trl_power", "sample", "--config", str(TINY / "sample.yaml")]
    command += [
        "--dataset_name",
        str(prompts),
        "--num_samples_per_prompt",
        "2",
        "--output_dir",
        str(tmp_path / "out"),
    ]
    command += ["--num_processes", "1"]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": ""}
    proc = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "4 completions of 2 prompts (smc, alpha=4)" in proc.stdout
    from datasets import load_from_disk

    data = load_from_disk(str(tmp_path / "out" / "dataset"))
    assert len(data) == 4 and data["prompt"] == ["sum 1 2 3 4 :"] * 2 + ["sum 9 9 9 9 :"] * 2
