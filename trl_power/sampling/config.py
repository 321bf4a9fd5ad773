"""Configuration and output types shared by every power sampler."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any

METHODS = ("plain", "temperature", "greedy", "low_temperature", "mh", "smc", "sir", "lookahead", "exact")
MH_SUFFIX_RULES = ("horizon", "current_length", "current_length_full")
MH_CUTS = ("uniform", "entropy")


@dataclass
class PowerSamplingConfig:
    """How to sample from the power distribution p_alpha(y|x) ∝ p(y|x)^alpha.

    Args:
        method: `"plain"` (plain sampling at `temperature`, the 1x cost floor; `"temperature"` is the same method under
            its former name), `"greedy"` (the most likely token at each step), `"low_temperature"`
            (per-token softmax(alpha * logits): NOT p_alpha, the baseline), `"mh"` (Metropolis-Hastings,
            Karan & Du 2025), `"smc"` (sequential Monte Carlo, Power-SMC), `"sir"` (sampling-importance-
            resampling), `"lookahead"` (TMC-style: each token drawn from p(v)^alpha * zeta_hat(v) over the top
            candidates, zeta estimated by rollouts; approximate by design), `"exact"` (enumerate every completion;
            tiny models only). Default `"smc"`, chosen by measurement at 3-512 new tokens (docs/sampling.md, "At
            length"): MH at its defaults (an annealed block schedule) stays far from p^alpha at every length measured,
            at 1.4-4.8x the tokens of SMC with 32 particles.
        alpha: The power (> 0). alpha > 1 sharpens, alpha = 1 is the base model.
        max_new_tokens: Most tokens generated per completion (>= 1). EOS or a stop string ends a completion earlier.
        stop_strings: Strings that end an answer as EOS does (e.g. `["\\n"]` for a base model answering a few-shot
            prompt, as `stop_strings` in transformers' generate and `stop` in vLLM): the answer ends at the first token
            whose text contains one (the token kept, `trl_power.modeling.stop_token_ids`) and counts as finished, for
            every method and both engines; the power target with `finished_only` is then p^alpha over the answers that
            end with EOS or a stop string. Matched per token: a stop string spelled over two tokens is not seen.
        proposal_temperature: Temperature tau of the proposal q(v) ∝ p(v)^(1/tau) used by MH, SMC and SIR. Any
            value keeps the samplers exact (weights and acceptance ratios use the q actually sampled from); it
            decides the budget they need. Default 1.0, chosen by measurement (docs/sampling.md, "Defaults chosen by
            measurement"): at tau = 1/alpha a strong answer behind a token that low temperature rarely picks is
            almost never proposed, and every sampler misses it. `None` means 1/alpha (the power-sampling
            reference's setting, the prefix-only variance-optimal proposal; the real-model recipes keep it).
        temperature: Temperature of `method="plain"` (1.0 = the base model).
        top_k: Truncate the proposal to its k most likely tokens (`None`: off). Truncation removes support:
            completions outside it can never be proposed, so MH/SMC/SIR are then exact only for p_alpha
            restricted to what the truncated proposal can reach. The reference MH code used HF's
            default top_k=50.
        top_p: Nucleus truncation of the proposal (`None`: off); same caveat as `top_k`.
        block_size: MH grows the answer in blocks of this many tokens and runs `mcmc_steps` after each.
            `None` means ceil(max_new_tokens / 16) (the reference: 3072 tokens, 16 blocks of 192).
            Exactness needs one block (block_size >= max_new_tokens); more blocks anneal.
        mcmc_steps: MH proposals per block. Default 30, chosen by measurement: 10 (the reference's) leaves MH short of
            p^alpha's accuracy on the trap models (docs/sampling.md).
        mh_suffix_rule: `"horizon"` (default, exact): a proposal resamples the suffix up to the end of the
            current block or EOS, and the acceptance includes the cut-point correction log(L / L').
            `"current_length"`: Karan & Du's released rule, kept for faithful benchmarks: resample back to
            the current length L, no cut-point correction, and the current answer's log-probs summed over
            [i, L') only (its tail beyond an early-stopping proposal left out of the ratio).
            `"current_length_full"`: the same proposal with the whole current suffix [i, L) in the ratio.
            Neither current-length rule is reversible: a proposal is never longer than the current answer,
            so the answer length never grows and both chains collapse onto short answers in the long run.
        mh_cut: How MH picks its cut point i over the L generated tokens. `"uniform"` (Karan & Du). `"entropy"`
            (Entropy-Cut MH, Zhou, Mehrotra & Liu 2026): q_cut(i | y) = w / L + (1 - w) H_i / sum_j H_j, H_i the
            entropy of p at position i, w = `mh_cut_uniform_weight`. Only the proposal changes: the acceptance
            includes q_cut(i | y') / q_cut(i | y), computed on the proposed sequence, so the target stays p^alpha.
            Needs `mh_suffix_rule="horizon"`; on vLLM an engine from `trl_power.load_vllm` (fused logprobs).
        mh_cut_uniform_weight: The uniform share w of the entropy cut law (in (0, 1]; it keeps every position
            proposable).
        finished_only: Which target the power samplers (mh, smc, sir, exact) aim at. Every answer ends with
            EOS or is cut at `max_new_tokens` = H. `True` (default): p^alpha over the *finished* answers only,
            p_alpha(y) ∝ p(y)^alpha 1{y ends with EOS}: a cut answer gets weight 0 (SIR, SMC), is rejected
            (MH) or is not enumerated (exact). `False`: (p_H)^alpha, the power of p truncated at H, in which a
            cut answer y_{1:H} counts with p(y_{1:H})^alpha, i.e. with the total mass of its continuations
            raised to alpha; since (sum p)^alpha >= sum p^alpha, cut answers are inflated. The default is what
            users of teacher data and of answers expect: complete answers (SFT likewise appends EOS to every
            completion), and no mass moved onto answers cut mid-sentence. A run in which no finished answer
            was found returns a cut one, flagged in `PowerSamplingOutput.finished` and counted in
            `stats["runs_without_finished"]`. Ignored by `temperature` and `low_temperature` (no target).
        lookahead_candidates: `lookahead`: next tokens considered at each step, the K most likely under p.
        lookahead_rollouts: `lookahead`: rollouts M per candidate that estimate log zeta (jackknifed).
        lookahead_horizon: `lookahead`: most tokens of a rollout (a rollout that stops there before EOS counts with
            its truncated suffix).
        num_particles: Particles per prompt for SMC, proposals per prompt for SIR. Default 64, chosen by measurement
            (docs/sampling.md, "At length"): the fewest of the grid whose answers are within sampling noise of
            p^alpha at every measured length from 16 to 512 new tokens (32 showed its finite-particle bias at 64 and
            512 tokens; on 3-4-token trap models 32 sufficed). A run costs about num_particles plain answers.
        ess_threshold: SMC resamples (systematically) a run's particles still decoding, m of them, when their
            ESS < ess_threshold * m.
        resample_interval: SMC advances every particle this many tokens between resampling checks (1: after
            every token; Power-SMC checks every 64-128 tokens). The weights carry the product over the interval: any
            value is exact; it sets the variance and, on the vLLM engine, the cost: one generate call per interval,
            which re-sends every particle's sequence (prefix-cache hits come in whole blocks). `None` (default): the
            engine's own, chosen by measurement (BENCHMARKS.md §8, §12(b)): 1 on the transformers engine (a check
            costs no model call there), `VLLM_RESAMPLE_INTERVAL` (8) on vLLM. Where the weights separate within an
            answer, longer intervals leave the answers further from p^alpha (32 tokens: far off).
        anneal_tokens: SMC tempers its intermediate targets over the first this many tokens: p(y_{1:t})^{alpha_t}
            with alpha_t rising linearly from 1 to alpha (Power-SMC anneals over the first few hundred tokens);
            0 (default): alpha throughout. The final target is p^alpha either way.
        return_all_particles: SMC/SIR: return the whole weighted particle set (with `weights`) instead of
            one resampled completion per run.
        num_samples_per_prompt: Independent power samples per prompt (independent chains / runs).
        batch_size: Sequences decoded together (the memory a batch takes): MH chains, or whole runs of SMC/SIR
            particles (batch_size // num_particles runs, at least one) and of lookahead rollouts
            (batch_size // (lookahead_candidates * lookahead_rollouts) runs, at least one). Default 64: 3.6x faster
            than 8 on 2 CPU cores (docs/sampling.md); larger is faster still where memory allows (the vLLM engine
            schedules what fits its KV cache, so there the larger the better).
        exact_max_sequences: `method="exact"` refuses models with more completions than this.
        seed: Seeds every random draw. Chain j of prompt i draws from its own generator seeded by
            (seed, i, j), so results do not depend on batching. `None` draws a fresh seed.
        show_progress: Show tqdm progress bars.
    """

    method: str = "smc"
    alpha: float = 4.0
    max_new_tokens: int = 256
    stop_strings: list[str] | None = None
    proposal_temperature: float | None = 1.0
    temperature: float = 1.0
    top_k: int | None = None
    top_p: float | None = None
    block_size: int | None = None
    mcmc_steps: int = 30
    mh_suffix_rule: str = "horizon"
    mh_cut: str = "uniform"
    mh_cut_uniform_weight: float = 0.25
    finished_only: bool = True
    lookahead_candidates: int = 8
    lookahead_rollouts: int = 4
    lookahead_horizon: int = 16
    num_particles: int = 64
    ess_threshold: float = 0.5
    resample_interval: int | None = None
    anneal_tokens: int = 0
    return_all_particles: bool = False
    num_samples_per_prompt: int = 1
    batch_size: int = 64
    exact_max_sequences: int = 200_000
    seed: int | None = 0
    show_progress: bool = False

    def __post_init__(self) -> None:
        if self.method not in METHODS:
            raise ValueError(f"method must be one of {METHODS}, got {self.method!r}")
        if not (isinstance(self.alpha, int | float) and math.isfinite(self.alpha) and self.alpha > 0):
            raise ValueError(f"alpha must be a finite number > 0, got {self.alpha!r}")
        if isinstance(self.stop_strings, str):
            self.stop_strings = [self.stop_strings]
        if self.stop_strings is not None and not all(isinstance(x, str) and x for x in self.stop_strings):
            raise ValueError(f"stop_strings must be non-empty strings, got {self.stop_strings!r}")
        if self.max_new_tokens < 1:
            raise ValueError(f"max_new_tokens must be >= 1, got {self.max_new_tokens}")
        for name in ("proposal_temperature", "temperature"):
            value = getattr(self, name)
            if value is not None and not value > 0:
                raise ValueError(f"{name} must be > 0, got {value}")
        if self.top_k is not None and self.top_k < 1:
            raise ValueError(f"top_k must be >= 1 or None, got {self.top_k}")
        if self.top_p is not None and not 0 < self.top_p <= 1:
            raise ValueError(f"top_p must be in (0, 1] or None, got {self.top_p}")
        if self.block_size is not None and self.block_size < 1:
            raise ValueError(f"block_size must be >= 1, got {self.block_size}")
        if self.mcmc_steps < 0:
            raise ValueError(f"mcmc_steps must be >= 0, got {self.mcmc_steps}")
        if self.mh_suffix_rule not in MH_SUFFIX_RULES:
            raise ValueError(f"mh_suffix_rule must be one of {MH_SUFFIX_RULES}, got {self.mh_suffix_rule!r}")
        if min(self.lookahead_candidates, self.lookahead_rollouts, self.lookahead_horizon) < 1:
            raise ValueError("lookahead_candidates, lookahead_rollouts and lookahead_horizon must be >= 1")
        if self.mh_cut not in MH_CUTS:
            raise ValueError(f"mh_cut must be one of {MH_CUTS}, got {self.mh_cut!r}")
        if self.mh_cut == "entropy" and self.mh_suffix_rule != "horizon":
            raise ValueError(
                "mh_cut='entropy' needs mh_suffix_rule='horizon' (its acceptance has the cut correction)."
            )
        if not 0 < self.mh_cut_uniform_weight <= 1:
            raise ValueError(f"mh_cut_uniform_weight must be in (0, 1], got {self.mh_cut_uniform_weight}")
        if self.num_particles < 1 or self.num_samples_per_prompt < 1 or self.batch_size < 1:
            raise ValueError("num_particles, num_samples_per_prompt and batch_size must be >= 1")
        if self.anneal_tokens < 0:
            raise ValueError(f"anneal_tokens must be >= 0, got {self.anneal_tokens}")
        if self.resample_interval is not None and self.resample_interval < 1:
            raise ValueError(f"resample_interval must be >= 1, got {self.resample_interval}")
        if not 0 <= self.ess_threshold <= 1:
            raise ValueError(f"ess_threshold must be in [0, 1], got {self.ess_threshold}")

    @property
    def proposal_tau(self) -> float:
        """The proposal temperature actually used (`proposal_temperature`, or 1/alpha for `None`)."""
        return self.proposal_temperature if self.proposal_temperature is not None else 1.0 / self.alpha

    @property
    def sequences_per_run(self) -> int:
        """Sequences one run decodes at once (what `batch_size` counts)."""
        if self.method in ("smc", "sir"):
            return self.num_particles
        if self.method == "lookahead":
            return self.lookahead_candidates * self.lookahead_rollouts
        return 1

    @property
    def runs_per_batch(self) -> int:
        return max(1, self.batch_size // self.sequences_per_run)

    @property
    def mh_block_size(self) -> int:
        return self.block_size or max(1, math.ceil(self.max_new_tokens / 16))

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class PowerSamplingOutput:
    """What a sampler returns; row k belongs to prompt `prompt_indices[k]`.

    Args:
        completions: Decoded completions (special tokens, EOS included, skipped: the text SFT expects, which
            appends EOS itself). Whether an answer ended with EOS is in `finished`, not in the text.
        completion_ids: Generated token ids (EOS included when generated).
        base_logprobs: log p(y|x) under the base model, summed over the completion tokens.
        prompt_indices: Index of the prompt each row answers.
        finished: Whether each completion ended with EOS (False: cut at `max_new_tokens`).
        weights: `None`, or the self-normalised weight of each row within its run (particle / importance
            sets, `return_all_particles=True`). A run without any finished answer under
            `finished_only=True` has all weights 0.
        log_z: SMC and SIR: per run (runs ordered by prompt, then sample), log Ẑ, the log of the run's mean
            unnormalised weight, an unbiased estimate of Z_alpha(x) = sum_y p(y|x)^alpha over the target's
            answers (finished ones with `finished_only`); `None` for the other methods.
        prompts: The prompts as given to `sample` (text or token ids), for `to_dataset`.
        stats: Cost and diagnostics: `prefill_tokens` and `decode_tokens` (real tokens fed through the
            model; padding not counted), `tokens_forwarded` (their sum), `seconds`, `num_samples`,
            `runs_without_finished`, and per method `acceptance_rate` and `mh_attempts` (MH), `resample_count`
            and `mean_ess` (SMC: the ESS at its resampling checks), `mean_ess` (SIR), and for SMC and SIR
            `final_ess` (mean over runs of the ESS of the final weights) and `degenerate_runs` (runs whose final
            ESS is below 2: one particle's answer, reweighted) and `finished_particles` (mean over runs of the
            particles that ended with EOS), and for MH `cut_proposal_rate` (proposals rejected for ending cut under
            the finished-only target). `PowerSampler.sample` warns, naming the setting to change, when most answers
            were cut, most runs are degenerate, MH accepted under 1% of its proposals, or the horizon is why.
    """

    completions: list[str]
    completion_ids: list[list[int]]
    base_logprobs: list[float]
    prompt_indices: list[int]
    finished: list[bool] = field(default_factory=list)
    weights: list[float] | None = None
    log_z: list[float] | None = None
    prompts: list[Any] | None = None
    stats: dict[str, Any] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.completion_ids)

    def to_dataset(self) -> Any:
        """The rows as a `datasets.Dataset` with columns `prompt` (as given), `completion` (text, no EOS: SFT
        appends it to finished answers, and `PowerDistillTrainer` to finished ones only), `completion_ids`
        (exact, EOS included when generated), `weight` (1.0, or the particle weight), `finished`,
        `prompt_index` and `base_logprob`; ready for `PowerDistillTrainer` (its text path) or any SFT
        trainer (which would also append EOS to cut answers: filter on `finished` first)."""
        from datasets import Dataset

        if self.prompts is None:
            raise ValueError("This output does not carry its prompts; build it with PowerSampler.sample.")
        if len(self) == 0:
            raise ValueError("The output has no rows.")
        weights = self.weights if self.weights is not None else [1.0] * len(self)
        return Dataset.from_dict(
            {
                "prompt": [self.prompts[i] for i in self.prompt_indices],
                "completion": list(self.completions),
                "completion_ids": [list(map(int, c)) for c in self.completion_ids],
                "weight": [float(w) for w in weights],
                "finished": [bool(f) for f in self.finished],
                "prompt_index": list(self.prompt_indices),
                "base_logprob": [float(x) for x in self.base_logprobs],
            }
        )
