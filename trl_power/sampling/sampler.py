"""`PowerSampler`: one entry point for every power sampler."""

from __future__ import annotations

import contextlib
import time
import warnings
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from trl_power.modeling import (
    context_length,
    continuation_texts,
    ensure_pad_token,
    eval_mode,
    merge_eos_ids,
    stop_token_ids,
)
from trl_power.prompts import tokenize_prompt
from trl_power.sampling.config import PowerSamplingConfig, PowerSamplingOutput
from trl_power.sampling.engine import TokenCounter, is_vllm_llm, make_engine
from trl_power.sampling.exact import sample_exact
from trl_power.sampling.lookahead import sample_lookahead
from trl_power.sampling.mh import sample_mh
from trl_power.sampling.plain import sample_plain
from trl_power.sampling.sir import sample_sir
from trl_power.sampling.smc import sample_smc
from trl_power.seeding import chain_generator, fresh_seed

#: A run whose final weights have an ESS below this is one particle's answer (`degenerate_runs`).
DEGENERATE_ESS = 2.0
#: An MH run that accepted fewer than this share of its proposals barely left its initial samples.
MIN_ACCEPTANCE = 0.01

_METHODS = {
    "plain": sample_plain,
    "temperature": sample_plain,
    "greedy": sample_plain,
    "low_temperature": sample_plain,
    "mh": sample_mh,
    "smc": sample_smc,
    "sir": sample_sir,
    "lookahead": sample_lookahead,
    "exact": sample_exact,
}


class PowerSampler:
    """Samples completions from p_alpha(y|x) ∝ p(y|x)^alpha of any transformers causal LM (PEFT included) or of a
    `vllm.LLM` (built with `trl_power.load_vllm`, or your own with the settings it checks).

    ```python
    sampler = PowerSampler(model, tokenizer, PowerSamplingConfig(method="smc", alpha=4.0, max_new_tokens=64))
    out = sampler.sample(["Question: 2 + 3 = ?"])
    out.completions, out.base_logprobs, out.stats["tokens_forwarded"]
    ```

    A transformers model is put in eval mode for sampling (its mode is restored afterwards) and run without
    gradients. A tokenizer without a pad token gets EOS as pad (padding is tracked by masks, never by ids). With a
    `vllm.LLM` the tokenizer may be `None` (the engine's own is used).
    """

    def __init__(self, model: Any, tokenizer: Any, config: PowerSamplingConfig | None = None):
        self.model = model
        if tokenizer is None and is_vllm_llm(model):
            tokenizer = model.get_tokenizer()
        self.tokenizer = ensure_pad_token(tokenizer) if tokenizer is not None else None
        self.config = config or PowerSamplingConfig()
        self.engine = make_engine(model, self.tokenizer)  # checks the model (vLLM settings) before any work
        # a token holding a stop string ends an answer as EOS does, on every engine
        if self.config.stop_strings:
            stops = stop_token_ids(self.tokenizer, self.config.stop_strings)
            self.engine.eos_ids = merge_eos_ids(self.engine.eos_ids, stops)
        self.eos_ids = self.engine.eos_ids

    def tokenize(self, prompts: Sequence[str] | Sequence[Sequence[int]]) -> list[list[int]]:
        """Prompts → token ids (`trl_power.prompts.tokenize_prompt`: text with the tokenizer's special tokens,
        messages with its chat template; id lists pass through)."""
        if isinstance(prompts, str) or len(prompts) == 0:
            raise ValueError("`prompts` must be a non-empty list of strings or of token-id lists.")
        out = []
        for i, p in enumerate(prompts):
            try:
                out.append(tokenize_prompt(self.tokenizer, p))
            except ValueError as e:
                raise ValueError(f"Prompt {i}: {e}") from None
        limit = self.engine.max_model_len if is_vllm_llm(self.model) else context_length(self.model)
        if limit is not None:
            longest = max(range(len(out)), key=lambda i: len(out[i]))
            if len(out[longest]) + self.config.max_new_tokens > limit:
                raise ValueError(
                    f"Prompt {longest} has {len(out[longest])} tokens; with max_new_tokens="
                    f"{self.config.max_new_tokens} that exceeds the model's context of {limit} positions."
                )
        return out

    def sample(self, prompts: Sequence[str] | Sequence[Sequence[int]]) -> PowerSamplingOutput:
        """Draw `num_samples_per_prompt` power samples for every prompt (or weighted particle sets); warns when most
        of them did not finish."""
        with torch.no_grad():
            out = self._sample(prompts)
        self._warn_unfinished(out)
        self._warn_untrustworthy(out)
        return out

    def _sample(self, prompts: Sequence[str] | Sequence[Sequence[int]]) -> PowerSamplingOutput:
        cfg = self.config
        prompt_ids = self.tokenize(prompts)
        seed = cfg.seed if cfg.seed is not None else fresh_seed()
        runs = [(i, j) for i in range(len(prompt_ids)) for j in range(cfg.num_samples_per_prompt)]
        method = _METHODS[cfg.method]
        counter, stats = TokenCounter(), {}
        self.engine.counter = counter
        rows: list[tuple[int, list[int], float, float | None]] = []
        start = time.perf_counter()
        with contextlib.nullcontext() if is_vllm_llm(self.model) else eval_mode(self.model):
            bar = tqdm(total=len(runs), desc=f"power sampling ({cfg.method})", disable=not cfg.show_progress)
            for b in range(0, len(runs), cfg.runs_per_batch):
                batch = runs[b : b + cfg.runs_per_batch]
                uniq = sorted({i for i, _ in batch})
                local = {i: k for k, i in enumerate(uniq)}
                gens = [chain_generator(seed, i, j) for i, j in batch]
                results = method(
                    self.engine, [prompt_ids[i] for i in uniq], [local[i] for i, _ in batch], gens, cfg, stats
                )
                for (i, _), res in zip(batch, results):
                    rows += [(i, list(ids), float(lp), w) for ids, lp, w in res]
                bar.update(len(batch))
            bar.close()
        seconds = time.perf_counter() - start
        return self._output(list(prompts), prompt_ids, rows, counter, stats, seconds)

    def _output(
        self,
        prompts: list,
        prompt_ids: list[list[int]],
        rows,
        counter: TokenCounter,
        stats: dict,
        seconds: float,
    ) -> PowerSamplingOutput:
        ids = [r[1] for r in rows]
        texts = continuation_texts(self.tokenizer, [prompt_ids[r[0]] for r in rows], ids)
        eos = set(self.eos_ids)
        finished = [bool(x) and x[-1] in eos for x in ids]
        weights = (
            [r[3] for r in rows] if self.config.return_all_particles and rows[0][3] is not None else None
        )
        out_stats: dict[str, Any] = {"method": self.config.method, **counter.as_dict(), "seconds": seconds}
        out_stats["num_samples"] = len(rows)
        out_stats["new_tokens"] = sum(len(x) for x in ids)
        if weights is not None:  # a run without a finished answer has weight 0 everywhere
            run_totals: dict[int, float] = {}
            for k, w in enumerate(weights):
                run_totals[k // self.config.num_particles] = (
                    run_totals.get(k // self.config.num_particles, 0) + w
                )
            out_stats["runs_without_finished"] = sum(t == 0 for t in run_totals.values())
        else:
            out_stats["runs_without_finished"] = (
                sum(not f for f in finished) if self.config.finished_only and self._has_target() else 0
            )
        if "mh_attempts" in stats:
            out_stats["acceptance_rate"] = stats["mh_accepts"] / max(1, stats["mh_attempts"])
            out_stats["mh_attempts"] = stats["mh_attempts"]
            out_stats["cut_proposal_rate"] = stats["mh_cut_proposals"] / max(1, stats["mh_attempts"])
        if "_ess_count" in stats:
            out_stats["resample_count"] = stats["resample_count"]
            out_stats["mean_ess"] = stats["_ess_sum"] / max(1, stats["_ess_count"])
        if "final_ess" in stats:  # ESS of each run's final weights: < 2 is one particle's answer, reweighted
            final = np.asarray(stats["final_ess"])
            out_stats["final_ess"] = float(final.mean())
            out_stats["degenerate_runs"] = int(((final > 0) & (final < DEGENERATE_ESS)).sum())
            if "_ess_count" not in stats:  # SIR: no resampling checks, its ESS is the final weights'
                out_stats["mean_ess"] = out_stats["final_ess"]
        if "finished_particles" in stats:  # particles per run that ended with EOS within max_new_tokens
            out_stats["finished_particles"] = float(np.mean(stats["finished_particles"]))
        return PowerSamplingOutput(
            completions=texts,
            completion_ids=ids,
            base_logprobs=[r[2] for r in rows],
            prompt_indices=[r[0] for r in rows],
            finished=finished,
            weights=weights,
            log_z=[float(z) for z in stats["log_z"]] if "log_z" in stats else None,
            prompts=prompts,
            stats=out_stats,
        )

    def _warn_unfinished(self, out: PowerSamplingOutput) -> None:
        """Warn when most answers (most runs, for weighted particle sets) were cut at max_new_tokens: a base model
        rarely emits EOS after a short answer, and cut answers are then what the sampler returns."""
        weights = out.weights
        runs = self._num_runs(out)
        cut = out.stats["runs_without_finished"] if weights is not None else sum(not f for f in out.finished)
        if runs and cut > runs / 2:
            ends = "EOS" + (
                f" or a stop string {self.config.stop_strings}" if self.config.stop_strings else ""
            )
            warnings.warn(
                f"{cut} of {runs} {'runs' if weights is not None else 'answers'} did not finish (no {ends} within "
                f"max_new_tokens={self.config.max_new_tokens}): they are cut answers (`finished` is False). Set "
                "stop_strings (e.g. ['\\n'] for a base model answering a few-shot prompt) or raise max_new_tokens.",
                stacklevel=3,
            )

    def _warn_untrustworthy(self, out: PowerSamplingOutput) -> None:
        """Warn, naming the setting to change, when the sampler's own statistics say its answers are not near
        p^alpha: most SMC/SIR runs ended with one particle carrying the weight (`degenerate_runs`: final ESS < 2), or
        MH accepted (almost) none of its proposals (`acceptance_rate` < 1% of at least 20); and where the reason is the
        horizon (most particles or MH proposals cut at max_new_tokens under the finished-only target:
        `finished_particles`, `cut_proposal_rate`), naming max_new_tokens instead."""
        cfg, stats = self.config, out.stats
        runs = self._num_runs(out)
        # runs that end on one particle's answer: degenerate ones, and (finished-only) those where none finished
        one_answer = stats.get("degenerate_runs", 0) + (
            stats["runs_without_finished"] if out.weights is None else 0
        )
        few_finished = (
            cfg.finished_only
            and "finished_particles" in stats
            and stats["finished_particles"] < 0.5 * cfg.num_particles
        )
        if runs and one_answer > runs / 2 and few_finished:
            warnings.warn(
                f"{cfg.method}: {one_answer} of {runs} runs ended on one particle's answer, and only "
                f"{stats['finished_particles']:.1f} of num_particles={cfg.num_particles} particles per run ended with "
                f"EOS within max_new_tokens={cfg.max_new_tokens} (the finished-only target gives a cut particle "
                "weight 0), so the answers are the few finishers', not draws near p^alpha. Raise max_new_tokens (or "
                "set stop_strings), then num_particles; a proposal_temperature below 1 makes EOS rarer still.",
                stacklevel=3,
            )
        elif runs and stats.get("degenerate_runs", 0) > runs / 2:
            warnings.warn(
                f"{cfg.method}: in {stats['degenerate_runs']} of {runs} runs one particle carries almost all the "
                f"final weight (ESS < {DEGENERATE_ESS:g} of num_particles={cfg.num_particles}; mean final ESS "
                f"{stats['final_ess']:.2f}), so each answer is one proposal's, not a draw near p^alpha. Raise "
                "num_particles, bring proposal_temperature nearer 1/alpha, or lower alpha.",
                stacklevel=3,
            )
        if stats.get("mh_attempts", 0) >= 20 and stats["cut_proposal_rate"] > 0.5:
            warnings.warn(
                f"mh: {stats['cut_proposal_rate']:.0%} of {stats['mh_attempts']} proposals ended without EOS within "
                f"max_new_tokens={cfg.max_new_tokens} and were rejected under the finished-only target "
                f"({stats['acceptance_rate']:.1%} accepted), so the chains move at a fraction of their steps. Raise "
                "max_new_tokens (or set stop_strings); a proposal_temperature below 1 makes EOS rarer still.",
                stacklevel=3,
            )
        elif stats.get("mh_attempts", 0) >= 20 and stats["acceptance_rate"] < MIN_ACCEPTANCE:
            warnings.warn(
                f"mh: {stats['acceptance_rate']:.1%} of {stats['mh_attempts']} proposals accepted, so the chains "
                "barely moved from their initial samples (plain draws of the proposal). Raise mcmc_steps, lower "
                "block_size, or bring proposal_temperature nearer 1/alpha.",
                stacklevel=3,
            )

    def _num_runs(self, out: PowerSamplingOutput) -> int:
        """Runs behind an output: one per answer, or one per `num_particles` rows of weighted particle sets."""
        return len(out) // self.config.num_particles if out.weights is not None else len(out)

    def _has_target(self) -> bool:
        return self.config.method in ("mh", "smc", "sir", "lookahead", "exact")
