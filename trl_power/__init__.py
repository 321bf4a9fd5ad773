"""trl-power: the power distribution p(y|x)^alpha of a language model, on top of TRL.

Heavy parts (trainers, samplers) are imported lazily, on first attribute access.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

_LAZY = {
    "PowerSamplingConfig": "trl_power.sampling",
    "PowerSampler": "trl_power.sampling",
    "PowerSamplingOutput": "trl_power.sampling",
    "generate_power_dataset": "trl_power.data",
    "load_power_dataset": "trl_power.data",
    "PowerSelfRewardConfig": "trl_power.trainers.self_reward_config",
    "PowerSelfRewardTrainer": "trl_power.trainers.self_reward_trainer",
    "PowerDistillConfig": "trl_power.trainers.distill_config",
    "PowerDistillTrainer": "trl_power.trainers.distill_trainer",
    "alpha_to_beta": "trl_power.theory",
    "beta_to_alpha": "trl_power.theory",
    "exact_power_distribution": "trl_power.sampling.exact",
    "load_vllm": "trl_power.sampling.vllm_engine",
}

__all__ = [
    "PowerDistillConfig",
    "PowerDistillTrainer",
    "PowerSampler",
    "PowerSamplingConfig",
    "PowerSamplingOutput",
    "PowerSelfRewardConfig",
    "PowerSelfRewardTrainer",
    "alpha_to_beta",
    "beta_to_alpha",
    "exact_power_distribution",
    "generate_power_dataset",
    "load_power_dataset",
    "load_vllm",
]

if TYPE_CHECKING:  # pragma: no cover
    from trl_power.data import generate_power_dataset, load_power_dataset
    from trl_power.sampling import PowerSampler, PowerSamplingConfig, PowerSamplingOutput
    from trl_power.sampling.exact import exact_power_distribution
    from trl_power.sampling.vllm_engine import load_vllm
    from trl_power.theory import alpha_to_beta, beta_to_alpha
    from trl_power.trainers.distill_config import PowerDistillConfig
    from trl_power.trainers.distill_trainer import PowerDistillTrainer
    from trl_power.trainers.self_reward_config import PowerSelfRewardConfig
    from trl_power.trainers.self_reward_trainer import PowerSelfRewardTrainer


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        value = getattr(importlib.import_module(_LAZY[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'trl_power' has no attribute {name!r}")
