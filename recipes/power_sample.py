"""`python recipes/power_sample.py ...` and `accelerate launch recipes/power_sample.py ...` run the package script
trl_power/scripts/power_sample.py (its docstring says what it does), as `trl-power` does."""

import runpy

if __name__ == "__main__":
    runpy.run_module("trl_power.scripts.power_sample", run_name="__main__", alter_sys=True)
