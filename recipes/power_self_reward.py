"""`python recipes/power_self_reward.py ...` and `accelerate launch recipes/power_self_reward.py ...` run the package script
trl_power/scripts/power_self_reward.py (its docstring says what it does), as `trl-power` does."""

import runpy

if __name__ == "__main__":
    runpy.run_module("trl_power.scripts.power_self_reward", run_name="__main__", alter_sys=True)
