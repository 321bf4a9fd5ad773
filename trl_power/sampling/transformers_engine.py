"""The transformers engine: the project's own batched decode loop over a KV-cache state with per-row random streams.

`DecodeState` holds, for each row (a chain or particle), the KV cache of its sequence *except the last
token*, plus that last token (`pending`). One `advance` feeds the pending tokens (one forward pass, one
token per row), returns next-token logits, and the caller samples the next pending token. Keeping the
last token out of the cache makes every operation uniform: a prompt, a finished block and an MH cut point
all become "cache of the prefix + one pending token", so an MH proposal from cut point i re-feeds exactly
one token (seq[i-1]) and never re-reads its prefix.

Rows live in one left-padded cache; positions come from per-row counters, so rows of different lengths
share a batch. Selecting, truncating and merging rows only gathers cached keys/values (memory moves, no
forward passes); gaps left by finished rows are squeezed out by `compact`. `TransformersEngine` exposes this
through the backend interface of engine.py; log p and log q of each sampled token are read off the forward pass
that sampled it (both from the same logits). Why not `model.generate`: MH restarts proposals from any cut point of a
cached prefix and SMC reorders rows between tokens, and both need log p and log q of the token actually drawn;
`generate` returns neither per-row truncatable caches nor both log-probabilities.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from transformers import DynamicCache, TopKLogitsWarper, TopPLogitsWarper
from transformers.cache_utils import DynamicLayer

from trl_power.modeling import call_model, eos_token_ids, model_device, output_cache
from trl_power.sampling.engine import Continuation, RunRandom, TokenCounter


def proposal_logprobs(
    logits: torch.Tensor, temperature: float, top_k: int | None = None, top_p: float | None = None
) -> torch.Tensor:
    """log q(v) for q ∝ softmax(logits / temperature) truncated to top-k / top-p (-inf outside), logits [rows, V]. The
    truncation is transformers' own (`TopKLogitsWarper`, `TopPLogitsWarper`, in `generate`'s order): top-p keeps the
    smallest set of most likely tokens whose mass reaches top_p."""
    scores = logits / temperature
    if top_k is not None and top_k < scores.shape[-1]:
        scores = TopKLogitsWarper(top_k)(None, scores)
    if top_p is not None and top_p < 1.0:
        scores = TopPLogitsWarper(top_p)(None, scores)
    return torch.log_softmax(scores, -1)


def sample_from_logprobs(
    logq: torch.Tensor, u: torch.Tensor, block: int = 1024, rows_per_chunk: int | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Inverse-CDF draw: the first v with CDF(v) > u * CDF(V), CDF(v) = sum_{v' <= v} exp(log q(v')) in float64 on
    CPU (so every backend draws alike, with the probabilities log q states to float64 precision). In two levels, so
    that a 262k-token vocabulary needs no float64 cumulative sum over the whole row: the block of `block` tokens where
    the CDF crosses the target (float64 block sums), then the token inside it. The two levels round differently from
    one cumulative sum only where a target lies within float64 rounding (~1e-16 relative) of a CDF value; a target
    at or past its block's in-block total (such rounding) takes the block's last token of positive probability, never
    a zero-probability slot (likewise a target at the row's total picks its last block of positive probability).
    Rows go `rows_per_chunk` at a time (default: 2^24 / V rows, at least one), which bounds the float64 copy's
    memory to 128 MiB.

    Returns (token, log Z) per row, log Z = log sum_v exp(log q(v)) in float64: token v is drawn with probability
    exp(log q(v) - log Z) exactly, which is what the caller must use as its proposal probability (a float32
    log-softmax does not sum to 1 exactly: see `sample_step`)."""
    if rows_per_chunk is None:
        rows_per_chunk = max(1, (1 << 24) // logq.shape[-1])
    if logq.shape[0] > rows_per_chunk:
        chunks = [
            sample_from_logprobs(
                logq[i : i + rows_per_chunk], u[i : i + rows_per_chunk], block, rows_per_chunk
            )
            for i in range(0, logq.shape[0], rows_per_chunk)
        ]
        return torch.cat([t for t, _ in chunks]), torch.cat([z for _, z in chunks])
    probs = logq.detach().to("cpu", torch.float64).exp()
    B, V = probs.shape
    block = min(block, V)  # a small vocabulary: one block, no padding
    nb = -(-V // block)
    if nb * block != V:
        probs = torch.nn.functional.pad(probs, (0, nb * block - V))
    probs = probs.view(B, nb, block)
    block_sums = probs.sum(-1)
    cum_blocks = block_sums.cumsum(-1)
    target = u.to(torch.float64).cpu() * cum_blocks[:, -1]
    b = torch.searchsorted(cum_blocks, target[:, None], right=True).squeeze(-1)
    last_positive_block = torch.where(block_sums > 0, torch.arange(nb).expand(B, nb), -1).amax(-1)
    b = torch.minimum(b, last_positive_block)
    before = torch.where(b > 0, cum_blocks.gather(1, (b - 1).clamp(min=0)[:, None]).squeeze(1), 0.0)
    in_block = probs[torch.arange(B), b]
    inside = in_block.cumsum(-1) + before[:, None]
    j = torch.searchsorted(inside, target[:, None], right=True).squeeze(-1)
    positions = torch.arange(block).expand(B, block)
    last_positive = torch.where(in_block > 0, positions, -1).amax(-1)
    token = (b * block + torch.minimum(j, last_positive)).to(logq.device)
    return token, cum_blocks[:, -1].log().to(logq.device)


def check_finite(logits: torch.Tensor) -> None:
    if not torch.isfinite(logits).all():
        raise FloatingPointError(
            "The model produced NaN/inf logits during sampling (check the dtype, the weights and the inputs)."
        )


class _GrowingLayer(DynamicLayer):
    """A DynamicLayer that appends into a preallocated buffer (capacity doubles when full).

    transformers' DynamicLayer concatenates on every step, copying the whole cache once per token (O(S^2)
    memory traffic over a generation); decoding here appends one token per step, so writing in place
    keeps it O(S)."""

    def update(self, key_states, value_states, *args, **kwargs):
        if not self.is_initialized:
            self.lazy_initialization(key_states, value_states)
            self._k = self._v = None
            self._len = 0
        n, add = self._len, key_states.shape[-2]
        if self._k is None or n + add > self._k.shape[-2]:
            cap = max(2 * (n + add), 64)
            shape = (*key_states.shape[:-2], cap, key_states.shape[-1])
            k = key_states.new_empty(shape)
            v = value_states.new_empty((*value_states.shape[:-2], cap, value_states.shape[-1]))
            if n:
                k[..., :n, :] = self._k[..., :n, :]
                v[..., :n, :] = self._v[..., :n, :]
            self._k, self._v = k, v
        self._k[..., n : n + add, :] = key_states
        self._v[..., n : n + add, :] = value_states
        self._len = n + add
        self.keys, self.values = self._k[..., : self._len, :], self._v[..., : self._len, :]
        return self.keys, self.values


def _growing_cache(kv) -> DynamicCache:
    cache = DynamicCache()
    if kv is not None:
        cache.layers = [_GrowingLayer() for _ in kv]
        for layer, (k, v) in zip(cache.layers, kv):
            layer.update(k, v)
    else:
        cache.layer_class_to_replicate = _GrowingLayer
    return cache


class DecodeState:
    """KV cache of each row's sequence minus its last token, and that last (`pending`) token.

    kv: per layer (keys, values), [B, H, S, D]; mask: [B, S] bool (live slots); positions: [B] (position
    id of the pending token = number of live slots); pending: [B] token ids.
    """

    def __init__(self, kv, mask: torch.Tensor, positions: torch.Tensor, pending: torch.Tensor):
        self.kv = kv
        self._cache = None  # the DynamicCache holding `kv`, kept across `advance` calls (no re-copy per step)
        self.mask = mask
        self.positions = positions
        self.pending = pending

    @property
    def batch_size(self) -> int:
        return self.pending.shape[0]

    # ----- building -------------------------------------------------------------------------------
    @classmethod
    def from_prompts(cls, model: torch.nn.Module, prompts: Sequence[Sequence[int]]) -> DecodeState:
        """Prefill prompt[:-1] of every prompt (left-padded); the last prompt token becomes pending."""
        device = model_device(model)
        lens = [len(p) - 1 for p in prompts]
        S = max(lens)
        B = len(prompts)
        pending = torch.tensor([p[-1] for p in prompts], dtype=torch.long, device=device)
        positions = torch.tensor(lens, dtype=torch.long, device=device)
        if S == 0:
            return cls(None, torch.zeros((B, 0), dtype=torch.bool, device=device), positions, pending)
        ids = torch.zeros((B, S), dtype=torch.long)
        mask = torch.zeros((B, S), dtype=torch.bool)
        for b, p in enumerate(prompts):
            if lens[b]:
                ids[b, S - lens[b] :] = torch.as_tensor(list(p[:-1]))
                mask[b, S - lens[b] :] = True
        ids, mask = ids.to(device), mask.to(device)
        pos = (mask.long().cumsum(-1) - 1).clamp(min=0)
        out = call_model(model, ids, mask.long(), pos, cache=DynamicCache(), logits_to_keep=1)
        kv = [(layer.keys, layer.values) for layer in output_cache(out).layers]
        return cls(kv, mask, positions, pending)

    def advance(self, model: torch.nn.Module, active: torch.Tensor | None = None) -> torch.Tensor:
        """Feed the pending token of every row (rows with active=False feed a masked slot); returns
        next-token logits [B, V] (float32). The fed tokens join the cache; `pending` is left to the caller."""
        B = self.batch_size
        active = torch.ones(B, dtype=torch.bool, device=self.pending.device) if active is None else active
        mask = torch.cat([self.mask, active[:, None]], dim=1)
        if self._cache is None:
            self._cache = _growing_cache(self.kv)
        cache = self._cache
        out = call_model(
            model, self.pending[:, None], mask.long(), self.positions[:, None], cache=cache, logits_to_keep=1
        )
        self.kv = [(layer.keys, layer.values) for layer in output_cache(out).layers]
        self.mask = mask
        self.positions = self.positions + active.long()
        logits = out.logits[:, -1].float()
        check_finite(logits)
        return logits

    # ----- reshaping rows (memory moves only) -----------------------------------------------------
    def _gather(self, rows: torch.Tensor, slots: torch.Tensor, slot_mask: torch.Tensor) -> DecodeState:
        """New state whose row b holds old row rows[b]'s slots `slots[b]` (masked where slot_mask=False)."""
        kv = None
        if self.kv is not None and slots.shape[1] > 0:
            # one indexing op per tensor: out[b, h, s] = k[rows[b], h, slots[b, s]] (k[rows].gather(...) copies twice)
            H = self.kv[0][0].shape[1]
            heads = torch.arange(H, device=slots.device)[None, :, None]
            r, s = rows[:, None, None], slots[:, None, :]
            kv = [(k[r, heads, s], v[r, heads, s]) for k, v in self.kv]
        return DecodeState(kv, slot_mask, self.positions[rows].clone(), self.pending[rows].clone())

    def truncate(self, rows: torch.Tensor, keep: torch.Tensor, pending: torch.Tensor) -> DecodeState:
        """Rows `rows`, each keeping only its first `keep[b]` live slots (left-padded), with new pending
        tokens. keep[b] must not exceed the row's live length."""
        mask = self.mask[rows]
        # live slots first, in order: stable sort on "is padding"
        order = torch.sort((~mask).to(torch.int8), dim=1, stable=True).indices
        W = int(keep.max()) if keep.numel() else 0
        j = torch.arange(W, device=mask.device)[None, :]
        offset = (W - keep)[:, None]
        live = j >= offset
        src = order.gather(1, (j - offset).clamp(min=0)) if W > 0 else order[:, :0]
        src = torch.where(live, src, torch.zeros_like(src))
        new = self._gather(rows, src, live)
        new.positions = keep.clone()
        new.pending = pending.clone()
        return new

    def select(self, rows: torch.Tensor) -> DecodeState:
        """Rows `rows` (repeats allowed: SMC resampling, SIR fan-out)."""
        return self.truncate(rows, self.mask[rows].sum(1), self.pending[rows])

    def reorder_(self, rows: torch.Tensor) -> DecodeState:
        """Rows `rows` (repeats allowed), in place: only the rows that change are copied, inside the cache's own
        buffers, so an SMC resampling step moves the resampled rows' keys/values and nothing else. This state must
        not be used under its old row order afterwards (SMC discards it). Without a cache yet (no `advance` since the
        state was built), `select`."""
        if self._cache is None or self.kv is None:
            return self.select(rows)
        changed = (rows != torch.arange(self.batch_size, device=rows.device)).nonzero().squeeze(1)
        if changed.numel():
            src = rows[changed]
            for layer in self._cache.layers:
                layer._k[changed] = layer._k[src]
                layer._v[changed] = layer._v[src]
            self.kv = [(layer.keys, layer.values) for layer in self._cache.layers]
            self.mask = self.mask[rows]
            self.positions = self.positions[rows]
            self.pending = self.pending[rows]
        return self

    def compact(self) -> DecodeState:
        """The same rows with the gaps left by inactive steps squeezed out."""
        return self.select(torch.arange(self.batch_size, device=self.pending.device))

    def padded_to(self, width: int, template: DecodeState | None = None) -> DecodeState:
        """Left-pad with masked slots to `width` (`template` gives cache shapes when this one is empty)."""
        extra = width - self.mask.shape[1]
        if extra <= 0:
            return self
        B = self.batch_size
        mask = torch.cat([torch.zeros((B, extra), dtype=torch.bool, device=self.mask.device), self.mask], 1)
        if self.kv is not None:
            kv = [(_pad_left(k, extra), _pad_left(v, extra)) for k, v in self.kv]
        else:
            kv = [
                (
                    k.new_zeros((B, k.shape[1], width, k.shape[3])),
                    v.new_zeros((B, v.shape[1], width, v.shape[3])),
                )
                for k, v in template.kv
            ]
        return DecodeState(kv, mask, self.positions, self.pending)

    def replace_rows(self, rows: torch.Tensor, other: DecodeState, inplace: bool = False) -> DecodeState:
        """This state with rows `rows` replaced by the rows of `other` (in order). `inplace`: this state may be
        overwritten (its owner discards it), so its buffers are written unless they must grow."""
        if rows.numel() == 0:
            return self
        width = max(self.mask.shape[1], other.mask.shape[1])
        a, b = self.padded_to(width, other), other.padded_to(width, self)
        fresh = inplace or a is not self  # padding made new cache and mask tensors: write into them
        mask = a.mask if fresh else a.mask.clone()
        positions, pending = (a.positions, a.pending) if inplace else (a.positions.clone(), a.pending.clone())
        mask[rows], positions[rows], pending[rows] = b.mask, b.positions, b.pending
        kv = None
        if a.kv is not None:
            kv = []
            for (ka, va), (kb, vb) in zip(a.kv, b.kv):
                if not fresh:
                    ka, va = ka.clone(), va.clone()
                ka[rows], va[rows] = kb, vb
                kv.append((ka, va))
        return DecodeState(kv, mask, positions, pending)


def _pad_left(x: torch.Tensor, extra: int) -> torch.Tensor:
    return torch.nn.functional.pad(x, (0, 0, extra, 0))


def prefill(
    model: torch.nn.Module,
    prompts: Sequence[Sequence[int]],
    row_to_prompt: Sequence[int],
    counter: TokenCounter,
) -> DecodeState:
    """Prefill each distinct prompt once, then fan it out to its rows (a cache copy, not a forward pass)."""
    state = DecodeState.from_prompts(model, prompts)
    counter.prefill_tokens += sum(len(p) - 1 for p in prompts)
    return state.select(torch.as_tensor(list(row_to_prompt), dtype=torch.long, device=state.pending.device))


def sample_step(
    model: torch.nn.Module,
    state: DecodeState,
    active: torch.Tensor,
    rng: RunRandom,
    temperature: float,
    top_k: int | None,
    top_p: float | None,
    counter: TokenCounter,
    rows: Sequence[int] | None = None,
    entropy: bool = False,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """One decoding step: feed the pending tokens of the active rows, draw y ~ q from the new logits and make it
    pending. Returns (y, log p(y), log q(y), H(p) or None), per row; inactive rows keep their pending token."""
    logits = state.advance(model, active)
    counter.decode_tokens += int(active.sum())
    logp = torch.log_softmax(logits, -1)
    plain = temperature == 1.0 and top_k is None and top_p is None
    logq = logp if plain else proposal_logprobs(logits, temperature, top_k, top_p)
    token, log_z_q = sample_from_logprobs(logq, rng.uniforms(active, rows))
    token = torch.where(active, token, state.pending)
    state.pending = token
    ent = -(logp.exp() * logp).sum(-1) if entropy else None
    # torch's float32 log_softmax on CPU does not sum to 1 exactly (its row sums are off by ~1e-5 on a 262k-token
    # vocabulary, the same way every row): uncorrected, log p and log q of every token would carry that offset, and
    # a weight p^alpha / q a per-token (alpha - 1) * offset, a tilt in the answers' length. Each is renormalised:
    # log q by the draw's own float64 total, log p (when it is another distribution) by logsumexp, which is exact.
    lq = logq.gather(1, token[:, None]).squeeze(1) - log_z_q.to(logq.dtype)
    lp = lq if plain else logp.gather(1, token[:, None]).squeeze(1) - torch.logsumexp(logp, -1)
    return token, lp, lq, ent


def decode(
    model: torch.nn.Module,
    state: DecodeState,
    rng: RunRandom,
    max_steps: torch.Tensor,
    eos_ids: Sequence[int],
    temperature: float,
    top_k: int | None,
    top_p: float | None,
    counter: TokenCounter,
    entropy: bool = False,
) -> tuple[DecodeState, list[list[int]], list[list[float]], list[list[float]], list[list[float]]]:
    """Sample up to max_steps[b] tokens for row b from q ∝ p^(1/temperature) (top-k/top-p truncated),
    stopping a row at EOS. Returns the new state (last token pending) and per row the tokens, their base
    log-probs log p(y_t) and proposal log-probs log q(y_t), both read off the forward pass that sampled them, and
    (with `entropy`, else empty lists) the entropy of p at each sampled position.

    Rows that are done drop out of the working batch once at most half of it is still active (one cache
    gather), so finished rows stop costing forward compute."""
    B = state.batch_size
    device = state.pending.device
    full, work = state, state
    rows = torch.arange(B, device=device)  # work row -> row of `state`
    max_steps = max_steps.to(device)
    steps = torch.zeros(B, dtype=torch.long, device=device)
    active = max_steps > 0
    eos = torch.as_tensor(list(eos_ids), device=device)
    out_t: list[list[int]] = [[] for _ in range(B)]
    out_p: list[list[float]] = [[] for _ in range(B)]
    out_q: list[list[float]] = [[] for _ in range(B)]
    out_h: list[list[float]] = [[] for _ in range(B)]
    while bool(active.any()):
        n_active = int(active.sum())
        if work.batch_size >= 4 and 2 * n_active <= work.batch_size:
            # (while work is full, full already holds every row's state; the caller's state is copied once)
            if work is not full:
                full = full.replace_rows(rows, work, inplace=full is not state)
            keep = active.nonzero().squeeze(1)
            work, rows, active = work.select(keep), rows[keep], active[keep]
            steps, max_steps = steps[keep], max_steps[keep]
        token, lp, lq, ent = sample_step(
            model, work, active, rng, temperature, top_k, top_p, counter, rows.tolist(), entropy
        )
        lp, lq = lp.tolist(), lq.tolist()
        ent = ent.tolist() if ent is not None else None
        for i, (r, a, t) in enumerate(zip(rows.tolist(), active.tolist(), token.tolist())):
            if a:
                out_t[r].append(t)
                out_p[r].append(lp[i])
                out_q[r].append(lq[i])
                if ent is not None:
                    out_h[r].append(ent[i])
        steps = steps + active.long()
        active = active & (steps < max_steps) & ~torch.isin(token, eos)
    full = full.replace_rows(rows, work, inplace=full is not state) if work is not full else work
    # squeeze out the masked slots of inactive steps once they outnumber the live ones (a memory copy)
    live = int(full.mask.sum())
    return (full.compact() if full.mask.numel() - live > live else full), out_t, out_p, out_q, out_h


class TransformersRows:
    """Rows of the transformers engine: their token sequences and the `DecodeState` of those sequences."""

    def __init__(self, state: DecodeState, tokens: list[list[int]]):
        self.state = state
        self.tokens = tokens

    def _index(self, idx: Sequence[int]) -> torch.Tensor:
        return torch.as_tensor(list(idx), dtype=torch.long, device=self.state.pending.device)

    def select(self, idx: Sequence[int]) -> TransformersRows:
        return TransformersRows(self.state.select(self._index(idx)), [list(self.tokens[i]) for i in idx])

    def reorder(self, idx: Sequence[int]) -> TransformersRows:
        """`select(idx)` that consumes these rows (in place: only the rows that change are copied)."""
        return TransformersRows(self.state.reorder_(self._index(idx)), [list(self.tokens[i]) for i in idx])

    def truncate(self, idx: Sequence[int], lengths: Sequence[int]) -> TransformersRows:
        """Row idx[b] cut to its first lengths[b] tokens: the cache keeps lengths[b] - 1 of them, the last pending."""
        device = self.state.pending.device
        keep = torch.tensor([n - 1 for n in lengths], dtype=torch.long, device=device)
        pending = torch.tensor([self.tokens[i][n - 1] for i, n in zip(idx, lengths)], device=device)
        tokens = [list(self.tokens[i][:n]) for i, n in zip(idx, lengths)]
        return TransformersRows(self.state.truncate(self._index(idx), keep, pending), tokens)

    def replace(self, idx: Sequence[int], other: TransformersRows) -> TransformersRows:
        """Rows idx[b] replaced by other's row b; consumes these rows (their cache is written in place)."""
        tokens = list(self.tokens)
        for i, t in zip(idx, other.tokens):
            tokens[i] = list(t)
        return TransformersRows(self.state.replace_rows(self._index(idx), other.state, inplace=True), tokens)


class TransformersEngine:
    """The backend interface (engine.py) on any transformers causal LM, PEFT included (run in eval mode, no grad by
    the caller)."""

    # a resampling check is a gather of cached rows, no model call: check after every token
    resample_interval = 1

    def __init__(self, model: torch.nn.Module, tokenizer: Any, counter: TokenCounter):
        self.model = model
        self.counter = counter
        self.eos_ids = eos_token_ids(model, tokenizer)

    def start(self, prompts: Sequence[Sequence[int]], row_to_prompt: Sequence[int]) -> TransformersRows:
        state = prefill(self.model, prompts, row_to_prompt, self.counter)
        return TransformersRows(state, [list(prompts[i]) for i in row_to_prompt])

    def extend(
        self,
        rows: TransformersRows,
        rng: RunRandom,
        max_steps: Sequence[int],
        temperature: float,
        top_k: int | None,
        top_p: float | None,
        entropy: bool = False,
    ) -> Continuation:
        steps = torch.as_tensor(list(max_steps), dtype=torch.long)
        state, toks, lps, lqs, ents = decode(
            self.model, rows.state, rng, steps, self.eos_ids, temperature, top_k, top_p, self.counter, entropy
        )
        new_rows = TransformersRows(state, [t + n for t, n in zip(rows.tokens, toks)])
        return Continuation(new_rows, toks, lps, lqs, ents if entropy else None)

    def branch(
        self, rows: TransformersRows, k: int
    ) -> tuple[list[list[int]], list[list[float]], TransformersRows]:
        state = rows.state
        logits = state.advance(
            self.model
        )  # feeds every row's pending token: the cache now holds whole sequences
        self.counter.decode_tokens += state.batch_size
        # logits - logsumexp: exact, unlike torch's float32 log_softmax on CPU (sample_step)
        logp = logits - torch.logsumexp(logits, -1, keepdim=True)
        top = torch.topk(logp, min(k, logp.shape[-1]), dim=-1)
        k = top.indices.shape[1]
        parents = torch.arange(state.batch_size, device=logp.device).repeat_interleave(k)
        children = state.select(parents)
        children.pending = top.indices.reshape(-1).clone()
        ids, lps = top.indices.tolist(), top.values.double().tolist()
        tokens = [rows.tokens[b] + [v] for b in range(len(ids)) for v in ids[b]]
        return ids, lps, TransformersRows(children, tokens)

    def score(
        self, prompts: Sequence[Sequence[int]], completions: Sequence[Sequence[int]]
    ) -> list[list[float]]:
        from trl_power.scoring import completion_token_logprobs

        lp, mask = completion_token_logprobs(self.model, prompts, completions)
        self.counter.scoring_tokens += sum(len(p) + len(c) for p, c in zip(prompts, completions))
        return [row[: int(m.sum())].tolist() for row, m in zip(lp, mask)]
