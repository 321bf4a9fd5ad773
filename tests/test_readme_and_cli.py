import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_readme_sampling_example_runs(capsys):
    text = (ROOT / "README.md").read_text()
    blocks = re.findall(r"```python\n(.*?)```", text, flags=re.S)
    assert blocks, "README has no python example"
    exec(compile(blocks[0], "README.md", "exec"), {})
    printed = capsys.readouterr().out
    tv = float(printed.strip().splitlines()[-1].split(":")[-1])
    # 500 iid SMC samples: TV to p^4 within the sampling bound (~0.1 at n=500, tests/test_sampling_exactness.py)
    assert tv < 0.15


def test_cli_help_lists_demo():
    proc = subprocess.run(
        [sys.executable, "-m", "trl_power", "--help"], capture_output=True, text=True, cwd=ROOT
    )
    assert proc.returncode == 0 and "demo" in proc.stdout


def test_the_public_contract_of_docs_design_md_imports():
    """docs/design.md section 3: every public name imports from `trl_power`, and the aliases of moved names still
    import from their old modules (the same objects)."""
    import trl_power
    from trl_power import diagnostic, evaluation, theory
    from trl_power.sampling import exact

    names = [
        "PowerSamplingConfig", "PowerSampler", "PowerSamplingOutput", "generate_power_dataset",
        "PowerSelfRewardConfig", "PowerSelfRewardTrainer", "PowerDistillConfig", "PowerDistillTrainer",
        "alpha_to_beta", "beta_to_alpha", "exact_power_distribution", "load_vllm", "load_power_dataset",
    ]  # fmt: skip
    for name in names:
        assert getattr(trl_power, name) is not None, name
    assert theory.exact_power_distribution is exact.exact_power_distribution
    assert evaluation.covariance_diagnostic is diagnostic.covariance_diagnostic
    assert callable(trl_power.PowerSamplingOutput.to_dataset)
