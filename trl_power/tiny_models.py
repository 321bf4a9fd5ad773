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
