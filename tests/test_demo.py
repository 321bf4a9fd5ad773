"""`trl-power demo --quick` end to end: the table is printed; report.md, results.json and the PNG plots are written."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
METHODS = ("plain", "low temperature", "MH", "SMC", "SIR", "distilled student", "self-reward policy")


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("demo")
    proc = subprocess.run(
        [sys.executable, "-m", "trl_power", "demo", "--quick", "--output_dir", str(out)],
        capture_output=True,
        text=True,
        timeout=600,
        cwd=ROOT,
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    return out, proc.stdout


def test_quick_prints_the_table(quick_run):
    _, stdout = quick_run
    assert "| task | method | accuracy | self-reward |" in stdout
    for task in ("aligned", "misaligned"):
        for method in METHODS:
            assert any(line.startswith(f"| {task} | {method}") for line in stdout.splitlines()), (
                task,
                method,
            )


def test_quick_writes_report_json_and_plots(quick_run):
    out, _ = quick_run
    report = (out / "report.md").read_text()
    assert "| task | method |" in report and "predicted gain" in report
    results = json.loads((out / "results.json").read_text())
    assert [t["task"] for t in results["tasks"]] == ["aligned", "misaligned"]
    for t in results["tasks"]:
        assert len(t["rows"]) == 7 + len(results["settings"]["student_adapters"])
        for row in t["rows"]:
            assert 0.0 <= row["accuracy"] <= 1.0
            assert row["tokens_per_answer"] > 0 and row["seconds_per_answer"] > 0
            assert row["mean_self_reward"] < 0  # a log-probability
        plain = t["rows"][0]
        assert plain["measured_gain"] == 0.0
        assert t["diagnostic"]["verdict"] in ("help", "hurt", "unclear")
    for name in ("accuracy_vs_cost.png", "predicted_vs_measured_gain.png"):
        png = out / name
        assert png.stat().st_size > 1000
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_add_demo_arguments_defaults():
    import argparse

    from trl_power.demo import add_demo_arguments

    args = add_demo_arguments(argparse.ArgumentParser()).parse_args([])
    assert args.tasks == ["aligned", "misaligned"] and args.seed == 0 and not args.quick
    assert (
        args.output_dir is None
    )  # outputs/demo, or outputs/demo-quick with --quick (never overwrites a real run)
