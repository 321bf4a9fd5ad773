"""Log-probabilities of completions under a causal LM.

For a prompt x and completion y = (y_1..y_T) (EOS included when generated):

    log p(y_t | x, y_<t) = log_softmax(logits_{t-1} / temperature)[y_t],     log p(y|x) = sum_t log p(y_t | x, y_<t)

Batches are laid out as [left-padded prompts | right-padded completions]; padding is tracked by masks built
from the lengths (never by comparing ids, so pad == eos is safe) and never counted. Position ids are
derived from the mask so left padding does not shift positions.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from trl.trainer.utils import pad, selective_log_softmax

from trl_power.modeling import adapter_disabled, call_model, model_device


def pad_prompt_completion(
    prompt_ids: Sequence[Sequence[int]], completion_ids: Sequence[Sequence[int]], pad_id: int = 0
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, int]:
    """Returns input_ids [B, P+C], attention_mask [B, P+C], completion_mask [B, C] and P (prompt width)."""
    if len(prompt_ids) != len(completion_ids):
        raise ValueError(f"{len(prompt_ids)} prompts but {len(completion_ids)} completions")
    if any(len(p) == 0 for p in prompt_ids):
        raise ValueError("Every prompt needs at least one token.")
    # TRL's `pad`; an empty completion still gets one (masked) column: every row has a last position
    prompts = [torch.as_tensor(list(p), dtype=torch.long) for p in prompt_ids]
    completions = [torch.as_tensor(list(c) or [pad_id], dtype=torch.long) for c in completion_ids]
    live = [torch.full((len(t),), int(len(c) > 0)) for t, c in zip(completions, completion_ids)]
    prompt_mask = pad([torch.ones_like(p) for p in prompts], 0, "left")
    completion_mask = pad(live, 0, "right")
    ids = torch.cat([pad(prompts, pad_id, "left"), pad(completions, pad_id, "right")], 1)
    return ids, torch.cat([prompt_mask, completion_mask], 1), completion_mask, prompt_mask.shape[1]


def positions_from_mask(mask: torch.Tensor) -> torch.Tensor:
    """Position id of each slot = number of live slots before it (pad slots get 0)."""
    return (mask.long().cumsum(-1) - 1).clamp(min=0)


def completion_token_logprobs(
    model: torch.nn.Module,
    prompt_ids: Sequence[Sequence[int]],
    completion_ids: Sequence[Sequence[int]],
    batch_size: int = 32,
    temperature: float = 1.0,
    disable_adapter: bool = False,
    grad: bool = False,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-token log-probs [N, C] of every completion token, and the completion mask [N, C] (0 on padding).

    `disable_adapter=True` scores under the base weights of a PEFT model (the reference policy).
    """
    device = model_device(model)
    n = len(prompt_ids)
    if n == 0:
        raise ValueError("No completions to score.")
    C = max(1, max(len(c) for c in completion_ids))
    out = torch.zeros((n, C), device=device)
    out_mask = torch.zeros((n, C), dtype=torch.long, device=device)
    grad_ctx = torch.enable_grad() if grad else torch.no_grad()
    chunks = []
    with grad_ctx, adapter_disabled(model, disable_adapter):
        for start in range(0, n, batch_size):
            sl = slice(start, start + batch_size)
            ids, mask, cmask, P = pad_prompt_completion(prompt_ids[sl], completion_ids[sl])
            ids, mask, cmask = ids.to(device), mask.to(device), cmask.to(device)
            logits = call_model(model, ids, mask, positions_from_mask(mask)).logits
            logits = logits[:, P - 1 : -1].float()
            if not torch.isfinite(logits).all():
                raise FloatingPointError("The model produced NaN/inf logits while scoring completions.")
            lp = selective_log_softmax(logits, ids[:, P:], temperature=temperature) * cmask
            width = lp.shape[1]
            if grad:
                chunks.append(torch.nn.functional.pad(lp, (0, C - width)))
            else:
                out[sl, :width] = lp
            out_mask[sl, :width] = cmask
    if grad:
        out = torch.cat(chunks, 0)
    return out, out_mask


def sequence_logprobs(
    model: torch.nn.Module,
    prompt_ids: Sequence[Sequence[int]],
    completion_ids: Sequence[Sequence[int]],
    batch_size: int = 32,
    temperature: float = 1.0,
    disable_adapter: bool = False,
    grad: bool = False,
) -> torch.Tensor:
    """log p(y|x) = sum_t log p(y_t|x, y_<t) for every (prompt, completion) pair, shape [N]."""
    lp, mask = completion_token_logprobs(
        model, prompt_ids, completion_ids, batch_size, temperature, disable_adapter, grad
    )
    return (lp * mask).sum(-1)
