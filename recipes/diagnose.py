"""`python recipes/diagnose.py ...` and `accelerate launch recipes/diagnose.py ...` run the package script
trl_power/scripts/diagnose.py (its docstring says what it does), as `trl-power` does."""

import runpy

if __name__ == "__main__":
    runpy.run_module("trl_power.scripts.diagnose", run_name="__main__", alter_sys=True)
