"""The backend interface every sampler is written against, and what it shares between engines.

A sampler holds *rows* (chains, particles, proposals): each row is a token sequence, prompt + generated so far,
`rows.tokens[b]`. An engine does three things with them:

- `start(prompts, row_to_prompt)`: rows holding the prompts (row b = prompt row_to_prompt[b]);
- `extend(rows, rng, max_steps, temperature, top_k, top_p, entropy=False)`: continue every row b by up to
  max_steps[b] tokens drawn from the proposal q ∝ p^(1/temperature) (top-k / top-p truncated), stopping a row at EOS;
  returns a `Continuation`: the extended rows and, per row, the new tokens with their per-token log p (the base
  model), log q (the proposal actually sampled from) and, when asked, the entropy of p at each of those positions;
- `branch(rows, k)`: the k most likely next tokens of each row under p, their log p, and the rows extended by each
  of them (row b's children are b*k .. b*k + k - 1); `rows` is consumed;
- `score(prompts, completions)`: per-token log p of given completions.

Rows are rearranged without any model call: `rows.select(idx)` (repeats allowed), `rows.reorder(idx)` (the same,
consuming `rows`, which lets an engine move only the rows that change: SMC's resampling), `rows.truncate(idx,
lengths)` (an MH cut point: the first lengths[b] tokens of row idx[b]), `rows.replace(idx, other)` (consuming
`rows`). `extend` and `branch` consume the rows they are given: use only the rows they return. Two engines
implement this: `TransformersEngine` (transformers_engine.py: the project's own batched decode loop, a KV cache per
row that these operations gather) and `VLLMEngine` (vllm_engine.py: an offline `vllm.LLM`, rows are token lists and
the prefix cache serves their shared prefixes). `make_engine(model, tokenizer)` picks the one for a model.

Randomness: every random number of a run (row of a sampler's batch) comes from that run's generator (`RunRandom`),
seeded by (seed, prompt index, sample index) (`trl_power.seeding.chain_generator`), so results do not depend on batching.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, NamedTuple, Protocol

import torch


class RunRandom:
    """Random streams of independent runs; rows of one run are contiguous and draw from the run's stream
    in row order, so a run's draws never depend on which other runs share its batch."""

    def __init__(self, generators: Sequence[torch.Generator], run_of_row: Sequence[int]):
        self.generators = list(generators)
        self.run_of_row = list(run_of_row)

    def uniforms(
        self, active: torch.Tensor | Sequence[bool], rows: Sequence[int] | None = None
    ) -> torch.Tensor:
        """One U(0,1) per active row (0 for inactive rows), float64 on CPU. `rows` maps the given rows to
        this object's rows (an ordered subset, as left when finished rows drop out of a batch)."""
        act = active.tolist() if isinstance(active, torch.Tensor) else list(active)
        run_of_row = self.run_of_row if rows is None else [self.run_of_row[r] for r in rows]
        out = torch.zeros(len(act), dtype=torch.float64)
        start = 0
        while start < len(act):
            run = run_of_row[start]
            end = start
            while end < len(act) and run_of_row[end] == run:
                end += 1
            picked = [r for r in range(start, end) if act[r]]
            if picked:
                out[picked] = torch.rand(len(picked), generator=self.generators[run], dtype=torch.float64)
            start = end
        return out

    def run_uniform(self, run: int, n: int = 1) -> torch.Tensor:
        return torch.rand(n, generator=self.generators[run], dtype=torch.float64)

    def subset(self, rows: Sequence[int]) -> RunRandom:
        """The streams of the given rows, as rows 0..len(rows)-1 (each its own run)."""
        return RunRandom([self.generators[self.run_of_row[r]] for r in rows], range(len(rows)))


class TokenCounter:
    """Honest cost accounting: real tokens fed through the model (padding, masked slots and prefix-cache hits
    not counted). `scoring_tokens`: tokens of the extra scoring passes an engine needs (vLLM, log p)."""

    def __init__(self) -> None:
        self.prefill_tokens = 0
        self.decode_tokens = 0
        self.scoring_tokens = 0

    def as_dict(self) -> dict[str, int]:
        return {
            "prefill_tokens": self.prefill_tokens,
            "decode_tokens": self.decode_tokens,
            "scoring_tokens": self.scoring_tokens,
            "tokens_forwarded": self.prefill_tokens + self.decode_tokens + self.scoring_tokens,
        }


class Rows(Protocol):
    """Token sequences (prompt + generated) of a sampler's rows, with whatever state the engine keeps for them."""

    tokens: list[list[int]]

    def select(self, idx: Sequence[int]) -> Rows: ...

    def reorder(self, idx: Sequence[int]) -> Rows: ...

    def truncate(self, idx: Sequence[int], lengths: Sequence[int]) -> Rows: ...

    def replace(self, idx: Sequence[int], other: Rows) -> Rows: ...


class Continuation(NamedTuple):
    """What `Engine.extend` returns: the extended rows and, per row, the new tokens, their log p and log q, and the
    entropy of p at each new position (None unless asked for)."""

    rows: Rows
    tokens: list[list[int]]
    logp: list[list[float]]
    logq: list[list[float]]
    entropy: list[list[float]] | None = None


class Engine(Protocol):
    """What the samplers need from a model (see the module docstring)."""

    eos_ids: list[int]
    counter: TokenCounter
    resample_interval: int  # SMC's tokens between resampling checks unless the config sets them

    def start(self, prompts: Sequence[Sequence[int]], row_to_prompt: Sequence[int]) -> Rows: ...

    def extend(
        self,
        rows: Rows,
        rng: RunRandom,
        max_steps: Sequence[int],
        temperature: float,
        top_k: int | None,
        top_p: float | None,
        entropy: bool = False,
    ) -> Continuation: ...

    def branch(self, rows: Rows, k: int) -> tuple[list[list[int]], list[list[float]], Rows]: ...

    def score(
        self, prompts: Sequence[Sequence[int]], completions: Sequence[Sequence[int]]
    ) -> list[list[float]]: ...


def is_vllm_llm(model: Any) -> bool:
    """True for a `vllm.LLM` (checked without importing vLLM)."""
    return type(model).__name__ == "LLM" and type(model).__module__.startswith("vllm")


def make_engine(model: Any, tokenizer: Any, counter: TokenCounter | None = None) -> Engine:
    """The engine for a model: `VLLMEngine` for a `vllm.LLM`, else `TransformersEngine` (any transformers causal LM,
    PEFT included)."""
    counter = counter if counter is not None else TokenCounter()
    if is_vllm_llm(model):
        from trl_power.sampling.vllm_engine import VLLMEngine

        return VLLMEngine(model, tokenizer, counter)
    from trl_power.sampling.transformers_engine import TransformersEngine

    return TransformersEngine(model, tokenizer, counter)
