"""Power samplers: MH, SMC, SIR, exact enumeration, and the plain / low-temperature baselines."""

from trl_power.sampling.config import METHODS, PowerSamplingConfig, PowerSamplingOutput
from trl_power.sampling.sampler import PowerSampler

__all__ = ["METHODS", "PowerSampler", "PowerSamplingConfig", "PowerSamplingOutput"]
