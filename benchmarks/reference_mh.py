"""A reference-faithful Metropolis-Hastings power sampler, written to mirror how Karan & Du's released
code runs (for the speed comparison only): one chain at a time (batch 1), one `model.generate` call per
proposal that re-reads the whole prefix, HF's default top_k=50 on the proposal, suffix resampled back to
the current length, stop after a block once EOS is in the answer.

log q comes from the processed generation scores (temperature + top-k), log p from the raw logits.
Tokens forwarded are counted as generate does the work: the prefix once per call, then one per new token
(the last generated token is not fed).
"""

from __future__ import annotations

import math
import random

import torch


@torch.no_grad()
def _generate(model, prefix, n_new, alpha, top_k, eos_id):
    out = model.generate(
        input_ids=torch.tensor([prefix]),
        attention_mask=torch.ones(1, len(prefix), dtype=torch.long),
        max_new_tokens=n_new,
        do_sample=True,
        temperature=1.0 / alpha,
        top_k=top_k,
        top_p=1.0,
        eos_token_id=eos_id,
        pad_token_id=eos_id,
        return_dict_in_generate=True,
        output_scores=True,
        output_logits=True,
    )
    new = out.sequences[0, len(prefix) :]
    scores = torch.stack(out.scores, 0)[:, 0].float()
    logits = torch.stack(out.logits, 0)[:, 0].float()
    idx = new[:, None]
    lq = torch.log_softmax(scores, -1).gather(1, idx).squeeze(1).tolist()
    lp = torch.log_softmax(logits, -1).gather(1, idx).squeeze(1).tolist()
    forwarded = len(prefix) + len(new) - 1
    return new.tolist(), lp, lq, forwarded


def reference_mh(model, prompt, alpha, max_new_tokens, block_size, mcmc_steps, eos_id, top_k=50, seed=0):
    """Returns (completion ids, log p, tokens forwarded, attempts, accepts)."""
    random.seed(seed)
    torch.manual_seed(seed)
    gen, lps, lqs = [], [], []
    forwarded = attempts = accepts = 0
    for _ in range(math.ceil(max_new_tokens / block_size)):
        n = min(block_size, max_new_tokens - len(gen))
        t, p, q, f = _generate(model, prompt + gen, n, alpha, top_k, eos_id)
        gen, lps, lqs, forwarded = gen + t, lps + p, lqs + q, forwarded + f
        for _ in range(mcmc_steps):
            L = len(gen)
            i = random.randint(0, L - 1)
            t, p, q, f = _generate(model, prompt + gen[:i], L - i, alpha, top_k, eos_id)
            forwarded += f
            attempts += 1
            log_r = alpha * (sum(p) - sum(lps[i:])) + sum(lqs[i:]) - sum(q)
            if random.random() < math.exp(min(log_r, 0.0)):
                accepts += 1
                gen, lps, lqs = gen[:i] + t, lps[:i] + p, lqs[:i] + q
        if eos_id in gen:
            break
    return gen, sum(lps), forwarded, attempts, accepts
