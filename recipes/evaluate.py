"""`python recipes/evaluate.py ...` and `accelerate launch recipes/evaluate.py ...` run the package script
trl_power/scripts/evaluate.py (its docstring says what it does), as `trl-power` does."""

import runpy

if __name__ == "__main__":
    runpy.run_module("trl_power.scripts.evaluate", run_name="__main__", alter_sys=True)
