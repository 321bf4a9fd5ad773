"""`python recipes/power_distill.py ...` and `accelerate launch recipes/power_distill.py ...` run the package script
trl_power/scripts/power_distill.py (its docstring says what it does), as `trl-power` does."""

import runpy

if __name__ == "__main__":
    runpy.run_module("trl_power.scripts.power_distill", run_name="__main__", alter_sys=True)
