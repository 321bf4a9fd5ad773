"""TRL trainers whose target is the power distribution, in TRL's layout: a config and a trainer module per trainer
(`self_reward_config` / `self_reward_trainer`, `distill_config` / `distill_trainer`) and `utils` for what they share.
The classes import from here (lazily) and from `trl_power`."""

from __future__ import annotations

import importlib
from typing import Any

_MODULES = {
    "PowerSelfRewardConfig": "self_reward_config",
    "PowerSelfRewardTrainer": "self_reward_trainer",
    "PowerDistillConfig": "distill_config",
    "PowerDistillTrainer": "distill_trainer",
}
__all__ = list(_MODULES)


def __getattr__(name: str) -> Any:
    if name in _MODULES:
        return getattr(importlib.import_module(f"{__name__}.{_MODULES[name]}"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
