"""Metropolis-Hastings power sampling (Karan & Du 2025), batched over chains, with KV-cache reuse.

Target pi(y) ∝ p(y|x)^alpha (times 1{y ends with EOS} in the last block with `finished_only`); proposal q =
sampling at temperature tau. The answer grows in blocks of B tokens; after each block, `mcmc_steps` times: pick a
cut point i over the L generated tokens from q_cut(i | y) (uniform, or with `mh_cut="entropy"` weighted by the
entropy of p at each position, `cut_law`), resample the suffix y'_{i:} from q, accept with

    log A = alpha * [log p(y'_{i:}) - log p(y_{i:})] + [log q(y_{i:}) - log q(y'_{i:})] (+ log q_cut(i|y') - log q_cut(i|y))

and stop a chain once its answer holds EOS. `mh_suffix_rule="horizon"` resamples up to the end of the
current block (or EOS) and adds the cut-point correction (the reverse move picks the same i from y': for uniform
cuts log(L/L'); for entropy cuts computed on the proposed sequence's entropies), which makes each block's kernel exact for the power of p truncated at that horizon (and,
in the last block, for p^alpha over finished answers with `finished_only`: a cut proposal is then rejected,
and from a cut answer any finished proposal is accepted). The current-length rules resample back to the
current length L with no correction: `"current_length"` sums the current answer's terms over [i, L') only,
as Karan & Du's released code does; `"current_length_full"` over [i, L).

Cost: a proposal from cut point i re-feeds one token (y_{i-1}) and then only its new suffix: the prefix's
keys/values are gathered from the chain's cache (no forward pass re-reads them), and log p, log q of every
new token come from the forward pass that sampled it.
"""

from __future__ import annotations

import math

from tqdm.auto import tqdm

from trl_power.sampling.config import PowerSamplingConfig
from trl_power.sampling.engine import Engine, RunRandom


def log_acceptance(
    alpha: float,
    cut: int,
    lp_new: list[float],
    lq_new: list[float],
    lp_old: list[float],
    lq_old: list[float],
    rule: str,
    new_in_target: bool = True,
    old_in_target: bool = True,
    log_cut_ratio: float | None = None,
) -> float:
    """log A for replacing the current suffix from cut point `cut` (lp_old, lq_old: its per-token log p, log q,
    the whole suffix [cut, L)) by a proposed one (lp_new, lq_new, ending at L'). `new_in_target` /
    `old_in_target`: whether each answer has positive target probability (False: a cut answer under the
    finished-only target). `log_cut_ratio` = log q_cut(cut | y') - log q_cut(cut | y), the reverse move's cut
    probability against the forward one's (horizon rule; None: uniform cuts, log L - log L')."""
    if not new_in_target:
        return -math.inf
    if not old_in_target:
        return math.inf
    if rule == "current_length":  # the reference's ratio: the current answer's terms over [cut, L') only
        lp_old, lq_old = lp_old[: len(lp_new)], lq_old[: len(lq_new)]
    log_a = alpha * (sum(lp_new) - sum(lp_old)) + (sum(lq_old) - sum(lq_new))
    if rule == "horizon":  # the reverse move picks the same cut point from y'
        if log_cut_ratio is None:  # uniform: 1/L' against 1/L
            log_cut_ratio = math.log(cut + len(lp_old)) - math.log(cut + len(lp_new))
        log_a += log_cut_ratio
    return log_a


def cut_law(entropies: list[float], uniform_weight: float) -> list[float]:
    """q_cut(i | y) over the L generated positions: uniform_weight / L + (1 - uniform_weight) H_i / sum_j H_j, H_i the
    entropy of p at position i (given y_<i). The entropy part places cuts at the decisions (a position where p is
    nearly deterministic re-samples the same token and wastes the proposal); the uniform part keeps every position
    proposable, so the chain stays irreducible. Uniform when every H_i is 0."""
    L = len(entropies)
    total = sum(entropies)
    if total <= 0:
        return [1.0 / L] * L
    return [uniform_weight / L + (1.0 - uniform_weight) * h / total for h in entropies]


def draw_cut(law: list[float], u: float) -> int:
    """Inverse-CDF draw of a cut position."""
    acc = 0.0
    for i, q in enumerate(law):
        acc += q
        if u < acc:
            return i
    return len(law) - 1


def sample_mh(
    engine: Engine, prompts, run_prompt, generators, config: PowerSamplingConfig, stats, initial=None
):
    """MH chains, one per run (run b answers prompt `run_prompt[b]`); returns per run [(answer ids, log p, None)].
    `initial` (tests of the kernel: one answer per run): the chains start from these answers instead of a first
    draw from q, so that a chain started in p^alpha must stay there; one block, tau = 1, no truncation."""
    B = len(run_prompt)
    tau, k, p = config.proposal_tau, config.top_k, config.top_p
    rule = config.mh_suffix_rule
    eos_set = set(engine.eos_ids)
    rng = RunRandom(generators, range(B))
    plen = [len(prompts[i]) for i in run_prompt]
    lps: list[list[float]] = [[] for _ in range(B)]
    lqs: list[list[float]] = [[] for _ in range(B)]
    hs: list[list[float]] = [[] for _ in range(B)]  # entropy of p at each position (entropy cuts)
    entropy_cut = config.mh_cut == "entropy"
    mix = config.mh_cut_uniform_weight
    if initial is None:
        rows = engine.start(prompts, run_prompt)  # rows.tokens[b]: prompt + the chain's current answer
    else:
        if config.mh_block_size < config.max_new_tokens or config.proposal_tau != 1 or k or p or entropy_cut:
            raise ValueError(
                "initial answers need one block, proposal_temperature 1, no top_k/top_p, uniform cuts"
            )
        rows = engine.start([list(prompts[i]) + list(a) for i, a in zip(run_prompt, initial)], range(B))
        lps = [list(x) for x in engine.score([prompts[i] for i in run_prompt], [list(a) for a in initial])]
        lqs = [list(x) for x in lps]
    done = [False] * B
    # cut_proposals: proposals rejected for ending without EOS under the finished-only target
    attempts = accepts = cut_proposals = 0
    block = config.mh_block_size
    n_blocks = math.ceil(config.max_new_tokens / block)
    bar = tqdm(range(n_blocks), desc="MH blocks", disable=not config.show_progress, leave=False)
    for kb in bar:
        horizon = min((kb + 1) * block, config.max_new_tokens)
        act = [b for b in range(B) if not done[b]]
        if not act:
            break
        # 1) grow every live chain to the horizon (or EOS)
        sub_rng = rng.subset(act)
        ended = [rows.tokens[b][-1] in eos_set and len(rows.tokens[b]) > plen[b] for b in act]
        steps = [0 if e else horizon - (len(rows.tokens[b]) - plen[b]) for b, e in zip(act, ended)]
        sub, _, lp, lq, ent = engine.extend(rows.select(act), sub_rng, steps, tau, k, p, entropy=entropy_cut)
        for j, b in enumerate(act):
            lps[b] += lp[j]
            lqs[b] += lq[j]
            if entropy_cut:
                hs[b] += ent[j]
        rows = rows.replace(act, sub)
        # the finished-only target applies to the last block's answers
        restrict = config.finished_only and horizon == config.max_new_tokens
        # 2) MH steps on every live chain
        for _ in range(config.mcmc_steps):
            L = [len(rows.tokens[b]) - plen[b] for b in act]
            u_cut = sub_rng.uniforms([True] * len(act)).tolist()
            if entropy_cut:
                laws = [cut_law(hs[b], mix) for b in act]
                cut = [draw_cut(law, u) for law, u in zip(laws, u_cut)]
            else:
                cut = [min(int(u * n), n - 1) for u, n in zip(u_cut, L)]
            prop = rows.truncate(act, [plen[b] + i for b, i in zip(act, cut)])
            target = [(horizon if rule == "horizon" else n) - i for n, i in zip(L, cut)]
            prop, toks, lp, lq, ent = engine.extend(prop, sub_rng, target, tau, k, p, entropy=entropy_cut)
            u_acc = sub_rng.uniforms([True] * len(act)).tolist()
            accepted = []
            for j, (b, i) in enumerate(zip(act, cut)):
                log_cut_ratio = None
                if entropy_cut:  # q_cut(i | y') over the proposal's positions, against q_cut(i | y)
                    log_cut_ratio = math.log(cut_law(hs[b][:i] + ent[j], mix)[i]) - math.log(laws[j][i])
                new_in_target = not restrict or (bool(toks[j]) and toks[j][-1] in eos_set)
                cut_proposals += not new_in_target
                log_a = log_acceptance(
                    config.alpha,
                    i,
                    lp[j],
                    lq[j],
                    lps[b][i:],
                    lqs[b][i:],
                    rule,
                    new_in_target=new_in_target,
                    old_in_target=not restrict or rows.tokens[b][-1] in eos_set,
                    log_cut_ratio=log_cut_ratio,
                )
                attempts += 1
                if (math.log(u_acc[j]) if u_acc[j] > 0 else -math.inf) < log_a:
                    accepts += 1
                    accepted.append(j)
                    lps[b] = lps[b][:i] + lp[j]
                    lqs[b] = lqs[b][:i] + lq[j]
                    if entropy_cut:
                        hs[b] = hs[b][:i] + ent[j]
            if accepted:
                rows = rows.replace([act[j] for j in accepted], prop.select(accepted))
        for b in act:
            gen = rows.tokens[b][plen[b] :]
            done[b] = (gen and gen[-1] in eos_set) or len(gen) >= config.max_new_tokens
    stats["mh_attempts"] = stats.get("mh_attempts", 0) + attempts
    stats["mh_accepts"] = stats.get("mh_accepts", 0) + accepts
    stats["mh_cut_proposals"] = stats.get("mh_cut_proposals", 0) + cut_proposals
    return [[(rows.tokens[b][plen[b] :], sum(lps[b]), None)] for b in range(B)]
