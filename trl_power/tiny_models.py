"""Tiny causal LMs built offline, for tests, benchmarks and enumerable ground truth.

A word-level tokenizer from the `tokenizers` library wrapped in `PreTrainedTokenizerFast`, and a small
`Qwen2`/`Llama` model. `fit_to_distribution` trains such a model so that p(y|x) matches a chosen
distribution over completions (cross-entropy sum_y target(y) * -log p(y|x), all leaves enumerated), which
is how tests build models whose power distribution is known to differ from low-temperature sampling.

Saving: with the locked transformers (requirements/lock.txt), `AutoTokenizer.from_pretrained` on a folder whose config is Qwen2 reloads this
word-level tokenizer as a `Qwen2Tokenizer` (words and spaces get lost); models that are saved and reloaded
(trainers, recipes, the tasks) therefore use `arch="llama"`, or load the tokenizer with
`PreTrainedTokenizerFast.from_pretrained`.
"""

from __future__ import annotations

import itertools
import math

import torch
from tokenizers import Tokenizer, models, pre_tokenizers
from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast, Qwen2Config, Qwen2ForCausalLM

EOS, PAD = "<eos>", "<pad>"


def build_tokenizer(words: list[str], with_pad: bool = True) -> PreTrainedTokenizerFast:
    """Word-level tokenizer; id 0 is EOS, then `words`, then (optionally) a pad token."""
    vocab = {EOS: 0}
    for w in words:
        vocab.setdefault(w, len(vocab))
    if with_pad:
        vocab[PAD] = len(vocab)
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token=EOS))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    kwargs = {"eos_token": EOS}
    if with_pad:
        kwargs["pad_token"] = PAD
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, **kwargs)
    fast.padding_side = "left"
    return fast


def build_model(
    vocab_size: int,
    seed: int = 0,
    arch: str = "qwen2",
    hidden_size: int = 32,
    num_layers: int = 2,
    num_heads: int = 4,
    max_position_embeddings: int = 64,
    initializer_range: float = 0.02,
    eos_token_id: int = 0,
    pad_token_id: int | None = None,
) -> torch.nn.Module:
    """A tiny random transformers causal LM (float32, eval mode, deterministic from `seed`)."""
    common = dict(
        vocab_size=vocab_size,
        hidden_size=hidden_size,
        intermediate_size=2 * hidden_size,
        num_hidden_layers=num_layers,
        num_attention_heads=num_heads,
        num_key_value_heads=num_heads,
        max_position_embeddings=max_position_embeddings,
        initializer_range=initializer_range,
        eos_token_id=eos_token_id,
        pad_token_id=pad_token_id,
        bos_token_id=None,
        tie_word_embeddings=False,
    )
    torch.manual_seed(seed)
    if arch == "qwen2":
        model = Qwen2ForCausalLM(Qwen2Config(**common))
    elif arch == "llama":
        model = LlamaForCausalLM(LlamaConfig(**common))
    else:
        raise ValueError(f"arch must be 'qwen2' or 'llama', got {arch!r}")
    model.generation_config.eos_token_id = eos_token_id
    model.generation_config.pad_token_id = pad_token_id
    return model.eval()


def all_completions(vocab_size: int, eos_id: int, max_new_tokens: int) -> list[tuple[int, ...]]:
    """Every completion of at most `max_new_tokens` tokens: ended by EOS, or cut at the limit."""
    out = []
    non_eos = [v for v in range(vocab_size) if v != eos_id]
    for n in range(max_new_tokens):
        out += [(*p, eos_id) for p in itertools.product(non_eos, repeat=n)]
    out += list(itertools.product(non_eos, repeat=max_new_tokens))
    return out


def fit_to_distribution(
    model: torch.nn.Module,
    prompt_ids: list[int],
    target: dict[tuple[int, ...], float],
    steps: int = 300,
    lr: float = 3e-2,
    seed: int = 0,
) -> torch.nn.Module:
    """Train `model` so that p(y | prompt) approximates `target` (a distribution over completions).

    Minimises sum_y target(y) * -log p(y|prompt) by full-batch Adam (exact cross-entropy, no sampling).
    """
    from trl_power.scoring import sequence_logprobs

    torch.manual_seed(seed)
    seqs = list(target)
    weights = torch.tensor([target[s] for s in seqs], dtype=torch.float32)
    weights = weights / weights.sum()
    prompts = [list(prompt_ids)] * len(seqs)
    comps = [list(s) for s in seqs]
    model.train()
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    for _ in range(steps):
        logp = sequence_logprobs(model, prompts, comps, grad=True)
        loss = -(weights * logp).sum()
        opt.zero_grad()
        loss.backward()
        opt.step()
    return model.eval()


def trap_target(
    vocab_size: int = 5,
    eos_id: int = 0,
    max_new_tokens: int = 3,
    heavy: float = 0.6,
    strong: float = 0.9,
    decision_position: int = 0,
) -> dict[tuple[int, ...], float]:
    """A distribution where per-token sharpening misleads (tokens 1, 2, 3 must not be `eos_id`).

    After a fixed prefix of `decision_position` tokens 3 (d), the decision: token 1 ("heavy", prob `heavy`) leads to
    many mediocre continuations (uniform over every completion of full length without EOS below it), token 2 (prob
    1 - heavy) to one strong continuation (2, 3, EOS) with prob `strong`, the rest of its mass spread over the
    other completions below 2. Low temperature prefers token 1 (heavy^alpha > (1-heavy)^alpha); the power
    distribution prefers the strong sequence when ((1-heavy)*strong)^alpha beats the sum of the heavy leaves'
    (heavy/K)^alpha. A little mass (2%) is spread over every completion so the target has full support. Needs
    max_new_tokens >= decision_position + 3; `trap_answer` is the strong sequence.
    """
    if max_new_tokens < decision_position + 3:
        raise ValueError("max_new_tokens must be >= decision_position + 3")
    comps = all_completions(vocab_size, eos_id, max_new_tokens)
    target = {c: 0.02 / len(comps) for c in comps}
    d = decision_position
    prefix = (3,) * d
    below = [c for c in comps if c[:d] == prefix and len(c) > d]
    heavy_leaves = [c for c in below if c[d] == 1 and len(c) == max_new_tokens and eos_id not in c]
    for c in heavy_leaves:
        target[c] += 0.98 * heavy / len(heavy_leaves)
    strong_seq = trap_answer(eos_id, decision_position)
    target[strong_seq] += 0.98 * (1 - heavy) * strong
    weak = [c for c in below if c[d] == 2 and c != strong_seq]
    for c in weak:
        target[c] += 0.98 * (1 - heavy) * (1 - strong) / len(weak)
    return target


def trap_answer(eos_id: int = 0, decision_position: int = 0) -> tuple[int, ...]:
    """The strong sequence of `trap_target`."""
    return (3,) * decision_position + (2, 3, eos_id)


def markov_model(
    logits: torch.Tensor,
    hidden_size: int = 128,
    num_heads: int = 2,
    max_position_embeddings: int = 1024,
    eos_token_id: int = 0,
) -> torch.nn.Module:
    """A Llama whose next-token law depends on the current token alone: p(v | ..., t) = softmax(logits[t])_v.

    One decoder layer whose attention and MLP write nothing (o_proj and down_proj are 0), so the residual stream at
    a position is the embedding of its token, e_t = the t-th unit vector; the final RMSNorm (weight 1/sqrt(d), d =
    `hidden_size`) maps it to e_t up to a factor (1 + eps d)^(-1/2) ~ 1 - 1e-10, and lm_head[v, t] = logits[t, v].
    Both engines serve it (a standard Llama; head size 64 by default, which vLLM's CPU attention needs), and its
    power distribution at any length follows by dynamic programming (`markov_power_law`). `logits`: [V, V], V <=
    hidden_size; read the law the model actually has with `markov_log_transitions`."""
    V = logits.shape[0]
    if logits.shape != (V, V) or hidden_size < V:
        raise ValueError(
            f"logits must be [V, V] with V <= hidden_size={hidden_size}, got {tuple(logits.shape)}"
        )
    if not torch.isfinite(logits).all():
        raise ValueError("logits must be finite (a zero probability: use a large negative logit, e.g. -30)")
    config = LlamaConfig(
        vocab_size=V,
        hidden_size=hidden_size,
        intermediate_size=hidden_size,
        num_hidden_layers=1,
        num_attention_heads=num_heads,
        num_key_value_heads=num_heads,
        max_position_embeddings=max_position_embeddings,
        rms_norm_eps=1e-12,
        eos_token_id=eos_token_id,
        pad_token_id=None,
        bos_token_id=None,
        tie_word_embeddings=False,
    )
    torch.manual_seed(0)
    model = LlamaForCausalLM(config)
    with torch.no_grad():
        layer = model.model.layers[0]
        layer.self_attn.o_proj.weight.zero_()
        layer.mlp.down_proj.weight.zero_()
        model.model.embed_tokens.weight.zero_()
        model.model.embed_tokens.weight[:, :V] = torch.eye(V)
        model.model.norm.weight.fill_(hidden_size**-0.5)
        model.lm_head.weight.zero_()
        model.lm_head.weight[:, :V] = logits.T.float()
    model.generation_config.eos_token_id = eos_token_id
    model.generation_config.pad_token_id = None
    return model.eval()


def markov_log_transitions(model: torch.nn.Module) -> torch.Tensor:
    """log p(v | t) [V, V] in float64, read off the model's forward pass on each single token (its float32 logits)."""
    V = model.config.vocab_size
    with torch.no_grad():
        logits = model(input_ids=torch.arange(V)[:, None]).logits[:, -1]
    return torch.log_softmax(logits.double(), -1)


def _backward_masses(
    A: torch.Tensor, horizon: int, finished_only: bool, eos_token_id: int
) -> list[torch.Tensor]:
    """g[k][t] = log of the mass (sum of exp of A along the path) of every continuation after a word t within k more
    tokens: g_0 = 0 for the cut answer unless finished-only (then -inf), g_k(t) = logaddexp(A[t, EOS],
    logsumexp_{w != EOS} A[t, w] + g_{k-1}(w))."""
    word = torch.ones(A.shape[0], dtype=torch.bool)
    word[eos_token_id] = False
    neg = torch.tensor(-math.inf, dtype=torch.float64)
    g = [torch.full((A.shape[0],), -math.inf if finished_only else 0.0, dtype=torch.float64)]
    for _ in range(horizon):
        g.append(
            torch.logaddexp(
                A[:, eos_token_id], torch.logsumexp(torch.where(word, A + g[-1][None, :], neg), 1)
            )
        )
    return g


def markov_power_law(
    log_transitions: torch.Tensor,
    last_prompt_token: int,
    alpha: float,
    horizon: int,
    finished_only: bool = True,
    eos_token_id: int = 0,
    prefix_tokens: int = 2,
) -> dict:
    """Exact laws of p^alpha over the answers of a Markov model (`markov_model`) within `horizon` = H new tokens.

    With A = alpha * log P (log-space throughout) and s the last prompt token, the mass of the answers of n tokens is
    m(n) = sum over y_1..y_n of exp(sum_t A[y_{t-1}, y_t]) (y_0 = s) with y_n = EOS and no EOS before (finished), and
    for the answers cut at H, paths of H tokens without EOS (counted only when `finished_only` is False: the power of
    p truncated at H). Forward recursion over the last token for m; the backward one, g_k(t) = the mass of every
    continuation within k more tokens after t (g_0 = 1 for a cut answer unless `finished_only`, else 0), gives the law
    of the first `prefix_tokens` tokens: P(y_{1:j}) ∝ exp(sum_{t<=j} A[y_{t-1}, y_t]) g_{H-j}(y_j) (or the answer's
    own mass when it ends by j).

    Returns {"length": {(n, finished): prob}, "prefix": {tuple of the first <= prefix_tokens tokens: prob},
    "log_z": log sum_y p(y)^alpha over the target, "mean_length": E[n]} (finished: 1, cut: 0)."""
    A = alpha * log_transitions.double()
    V = A.shape[0]
    word = torch.ones(V, dtype=torch.bool)
    word[eos_token_id] = False
    neg = torch.tensor(-math.inf, dtype=torch.float64)
    # forward: f[v] = log mass of paths of n tokens, none EOS, ending in v
    f = A[last_prompt_token].clone()
    log_mass = {(1, 1): float(A[last_prompt_token, eos_token_id])}
    f = torch.where(word, f, neg)
    for n in range(2, horizon + 1):
        log_mass[(n, 1)] = float(torch.logsumexp(f + A[:, eos_token_id], 0))
        f = torch.where(word, torch.logsumexp(f[:, None] + A, 0), neg)
    if not finished_only:
        log_mass[(horizon, 0)] = float(torch.logsumexp(f, 0))
    keys = list(log_mass)
    logs = torch.tensor([log_mass[k] for k in keys], dtype=torch.float64)
    log_z = float(torch.logsumexp(logs, 0))
    probs = (logs - log_z).exp().tolist()
    length = dict(zip(keys, probs))
    g = _backward_masses(A, horizon, finished_only, eos_token_id)
    prefix: dict[tuple[int, ...], float] = {}
    frontier = [((), last_prompt_token, 0.0)]
    for j in range(1, min(prefix_tokens, horizon) + 1):
        nxt = []
        for seq, last, lm in frontier:
            for v in range(V):
                lv = lm + float(A[last, v])
                if v == eos_token_id:
                    prefix[(*seq, v)] = lv
                elif j == min(prefix_tokens, horizon):
                    prefix[(*seq, v)] = lv + float(g[horizon - j][v])
                else:
                    nxt.append(((*seq, v), v, lv))
        frontier = nxt
    prefix = {k: math.exp(v - log_z) for k, v in prefix.items() if v > -math.inf}
    mean_length = sum(n * p for (n, _), p in length.items())
    return {"length": length, "prefix": prefix, "log_z": log_z, "mean_length": mean_length}


def two_cycle_logits(
    first_a: float = 0.35,
    stay_a: float = 0.985,
    end_a: float = 0.01,
    stay_b: float = 0.995,
    end_b: float = 0.004,
) -> torch.Tensor:
    """log p(next | current) [10, 10] of a Markov model with long answers (`markov_model`): token 0 is EOS, 9 the
    prompt, 1-4 and 5-8 two cycles (1->2->3->4->1, 5->6->7->8->5). From the prompt, cycle a starts with `first_a`,
    cycle b with 1 - first_a - 0.02 (EOS 0.005, the other words the rest); in a cycle the next token follows with
    `stay_*`, EOS with `end_*`, any other word with the rest. Under p most answers run ~100 tokens; p^4's answers are
    shorter (the defaults: mean 17.6 at 64 new tokens, 19% beyond 32; 28.3 at 256) and split between the cycles
    about evenly, where low temperature (per-token p^4) starts cycle b nine times in ten."""
    P = torch.zeros(10, 10, dtype=torch.float64)
    P[9, 1], P[9, 5], P[9, 0] = first_a, 1 - first_a - 0.02, 0.005
    P[9, [2, 3, 4, 6, 7, 8]] = 0.015 / 6
    for cycle, stay, end in (((1, 2, 3, 4), stay_a, end_a), ((5, 6, 7, 8), stay_b, end_b)):
        for k, t in enumerate(cycle):
            P[t, 1:9] = (1 - stay - end) / 7
            P[t, cycle[(k + 1) % 4]] = stay
            P[t, 0] = end
    P[0, :9] = 1 / 9  # after EOS (never reached by a sampler)
    P[:, 9] = 1e-9  # the prompt token is (almost) never generated
    return (P / P.sum(1, keepdim=True)).log()


def ring_logits(positions: int, split: float = 0.6, end: float = 0.5) -> torch.Tensor:
    """log p(next | current) [2K + 2, 2K + 2] (K = `positions`) of a Markov model (`markov_model`) whose power
    distribution's weights separate in mid-answer: token 0 is EOS, 2K + 1 the prompt, and at each position k = 1..K of
    a ring two words, a_k = 2k - 1 with probability `split` and b_k = 2k with 1 - split, whichever word held position
    k - 1; after position K, EOS with `end`, else the ring again. Every other transition has log-probability -1000
    (exactly 0 once exponentiated in float32; as a log it keeps the model's logits finite). An answer of m laps has
    mK words and EOS, mK + 1 tokens.

    Under p^alpha with a horizon H in [K + 1, 2K] (the one-lap answer fits, a second lap does not) the answers are the
    one-lap ones, each position a_k independently with probability q = s^alpha / (s^alpha + (1 - s)^alpha) (0.835 at
    s = 0.6, alpha = 4): the number of b's is Binomial(K, 1 - q), exact. (Paths through the -1000 transitions weigh
    exp(-1000 alpha) each against the one-lap answers' ((s^alpha + (1-s)^alpha)^K end^alpha > exp(-2 K) at the
    defaults: none for K < 2000.) A proposal from p picks a_k with s only, and each b costs a particle
    (alpha - 1) log(s / (1 - s)) nats of weight (1.2 at the defaults): weights separate within a few tokens, so SMC
    resamples throughout the answer, and how often it checks (its resample interval) matters."""
    K = positions
    V = 2 * K + 2
    logp = torch.full((V, V), -1000.0, dtype=torch.float64)
    for prev in [V - 1, *range(1, V - 1)]:
        k = 0 if prev == V - 1 else (prev + 1) // 2  # the position of `prev` (0: the prompt)
        if k == K:
            logp[prev, 0] = math.log(end)
            logp[prev, 1], logp[prev, 2] = math.log((1 - end) * split), math.log((1 - end) * (1 - split))
        else:
            logp[prev, 2 * k + 1], logp[prev, 2 * k + 2] = math.log(split), math.log(1 - split)
    logp[0, 1 : V - 1] = -math.log(V - 2)  # after EOS (never reached by a sampler)
    return logp


def markov_power_samples(
    log_transitions: torch.Tensor,
    last_prompt_token: int,
    alpha: float,
    horizon: int,
    n: int,
    seed: int = 0,
    finished_only: bool = True,
    eos_token_id: int = 0,
) -> list[list[int]]:
    """n exact draws from p^alpha over the answers of a Markov model within `horizon` tokens (the law of
    `markov_power_law`): token by token, P(y_j = v | y_<j) ∝ exp(A[y_{j-1}, v]) g_{H-j}(v), g the backward masses
    (for v = EOS: exp(A[y_{j-1}, EOS]), the answer ends)."""
    A = alpha * log_transitions.double()
    V = A.shape[0]
    word = torch.ones(V, dtype=torch.bool)
    word[eos_token_id] = False
    g = _backward_masses(A, horizon, finished_only, eos_token_id)
    gen = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(n):
        last, answer = last_prompt_token, []
        for j in range(1, horizon + 1):
            logits = A[last] + torch.where(word, g[horizon - j], torch.zeros(V, dtype=torch.float64))
            v = int(torch.multinomial(torch.softmax(logits, 0), 1, generator=gen))
            answer.append(v)
            if v == eos_token_id:
                break
            last = v
        out.append(answer)
    return out
