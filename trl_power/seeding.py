"""Seeds: every random draw of the project comes from a seed derived from the user's seed and where the draw is.

- `derived_seed(*parts)`: a 63-bit seed from integers (user seed, shard, step, ...), via numpy's `SeedSequence`
  (hashes of nearby inputs are independent): shard s of a teacher data set samples with derived_seed(seed, s), the
  online teacher with derived_seed(seed, step, process).
- `chain_generator(seed, i, j)`: the torch generator of chain / run j of prompt i; all of its tokens, cut points,
  acceptances and resampling draws come from it, so outputs never depend on batching.
- `fresh_seed()`: a seed from the OS's entropy, for `seed=None`.
"""

from __future__ import annotations

import numpy as np
import torch


def derived_seed(*parts: int) -> int:
    """The 63-bit seed SeedSequence(parts) gives (its first 64-bit word, halved)."""
    state = np.random.SeedSequence([int(p) for p in parts]).generate_state(1, dtype=np.uint64)
    return int(state[0] >> np.uint64(1))


def chain_generator(seed: int, prompt_index: int, sample_index: int) -> torch.Generator:
    """The random stream of chain `sample_index` of prompt `prompt_index` (independent of batching)."""
    state = np.random.SeedSequence([seed, prompt_index, sample_index]).generate_state(2, dtype=np.uint32)
    return torch.Generator().manual_seed(int(state[0]) << 32 | int(state[1]))


def fresh_seed() -> int:
    """A 32-bit seed from the OS's entropy."""
    return int(np.random.SeedSequence().generate_state(1, dtype=np.uint32)[0])
