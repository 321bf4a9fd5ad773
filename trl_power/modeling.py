"""Small helpers around transformers models that every part of trl-power shares.

- `call_model`: one forward pass with explicit positions and an optional KV cache. transformers 5 renamed
  `past_key_values` to `cache`; we look the name up once per model class instead of pinning a version.
- `adapter_disabled`: the reference model of a PEFT student is the same weights with the adapter off (TRL's
  `use_adapter`; PEFT models recognised by accelerate's `is_peft_model`).
- `context_length`, `eos_token_ids`, `stop_token_ids`, `ensure_pad_token`, `continuation_texts`: facts about a model/tokenizer pair.
"""

from __future__ import annotations

import contextlib
import functools
import inspect
from collections.abc import Iterator, Sequence
from typing import Any

import torch
from accelerate.utils import extract_model_from_parallel, is_peft_model
from trl.trainer.utils import use_adapter


@functools.lru_cache(maxsize=64)
def _cache_kwarg(model_cls: type) -> str:
    params = inspect.signature(model_cls.forward).parameters
    return "cache" if "cache" in params else "past_key_values"


def base_model_class(model: torch.nn.Module) -> type:
    """The class of the transformers model under any PEFT / DDP wrappers."""
    inner = model
    for _ in range(5):
        if hasattr(inner, "get_base_model"):
            inner = inner.get_base_model()
        elif hasattr(inner, "module"):
            inner = inner.module
        else:
            break
    return type(inner)


def call_model(
    model: torch.nn.Module,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    position_ids: torch.Tensor,
    cache: Any = None,
    logits_to_keep: int = 0,
) -> Any:
    """Forward pass with explicit `position_ids` (left padding and gaps in the mask stay correct)."""
    kwargs = {
        "input_ids": input_ids,
        "attention_mask": attention_mask,
        "position_ids": position_ids,
        "use_cache": cache is not None,
    }
    if cache is not None:
        kwargs[_cache_kwarg(base_model_class(model))] = cache
    if logits_to_keep:
        kwargs["logits_to_keep"] = logits_to_keep
    return model(**kwargs)


def output_cache(outputs: Any) -> Any:
    """The KV cache returned by a forward pass (`cache` in transformers 5, `past_key_values` before)."""
    cache = getattr(outputs, "cache", None)
    return cache if cache is not None else getattr(outputs, "past_key_values", None)


@contextlib.contextmanager
def adapter_disabled(model: torch.nn.Module, disable: bool = True) -> Iterator[None]:
    """Run the base weights of a PEFT model (adapter off, TRL's `use_adapter(model, None)`), also when it is wrapped
    (DDP); a no-op for other models or `disable=False`."""
    if disable and is_peft_model(model):
        with use_adapter(extract_model_from_parallel(model), None):
            yield
    else:
        yield


@contextlib.contextmanager
def eval_mode(model: torch.nn.Module) -> Iterator[None]:
    """Put the model in eval mode (dropout off) and restore its previous mode afterwards."""
    was_training = model.training
    model.eval()
    try:
        yield
    finally:
        model.train(was_training)


def text_config(model: torch.nn.Module) -> Any:
    config = model.config
    return config.get_text_config() if hasattr(config, "get_text_config") else config


def context_length(model: torch.nn.Module) -> int | None:
    """The longest sequence the model's positions allow (None when the config does not say)."""
    return getattr(text_config(model), "max_position_embeddings", None)


def eos_token_ids(model: torch.nn.Module, tokenizer: Any = None) -> list[int]:
    """All token ids that end a completion: the tokenizer's EOS and the model's generation-config EOS."""
    gen_config = getattr(model, "generation_config", None)
    return merge_eos_ids(
        getattr(tokenizer, "eos_token_id", None),
        getattr(gen_config, "eos_token_id", None),
        getattr(text_config(model), "eos_token_id", None),
    )


def merge_eos_ids(*candidates: Any) -> list[int]:
    """The distinct EOS ids among candidates (each None, an id or a list of ids), in order; a `ValueError` if none."""
    ids: list[int] = []
    for cand in candidates:
        for i in cand if isinstance(cand, list | tuple) else [cand]:
            if i is not None and int(i) not in ids:
                ids.append(int(i))
    if not ids:
        raise ValueError("Neither the tokenizer nor the model config defines an EOS token id.")
    return ids


def stop_token_ids(tokenizer: Any, stop_strings: Sequence[str]) -> list[int]:
    """The ids of the tokens whose text contains one of `stop_strings` (special tokens excluded): an answer ends at the
    first such token, which it keeps (as transformers' `stop_strings`), and is then finished like one that ends with
    EOS. Matched token by token: a stop string that the model spells over two tokens (a "\\n\\n" as "\\n" + "\\n") is
    not seen, so choose stop strings that single tokens contain, like "\\n". A `ValueError` if no token contains
    one of them."""
    if tokenizer is None:
        raise ValueError("stop_strings need a tokenizer (to find the tokens that contain them).")
    cache = tokenizer.__dict__.setdefault("_trl_power_stop_ids", {})
    key = tuple(stop_strings)
    if key not in cache:
        special = set(tokenizer.all_special_ids)
        texts = tokenizer.batch_decode([[i] for i in range(len(tokenizer))], skip_special_tokens=False)
        ids = {}
        for s in stop_strings:
            if not s:
                raise ValueError("A stop string must not be empty.")
            found = [i for i, t in enumerate(texts) if s in t and i not in special]
            if not found:
                raise ValueError(f"No token of the tokenizer contains the stop string {s!r}.")
            ids.update(dict.fromkeys(found))
        cache[key] = sorted(ids)
    return list(cache[key])


def ensure_pad_token(tokenizer: Any) -> Any:
    """Give a tokenizer without a pad token the EOS token as pad (padding is always tracked by masks here,
    never by comparing ids, so pad == eos is safe)."""
    if tokenizer is not None and tokenizer.pad_token_id is None:
        if tokenizer.eos_token is None:
            raise ValueError("The tokenizer has neither a pad token nor an EOS token.")
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def model_device(model: torch.nn.Module) -> torch.device:
    return next(model.parameters()).device


def continuation_texts(
    tokenizer: Any,
    prompt_ids: Sequence[Sequence[int]],
    completion_ids: Sequence[Sequence[int]],
    skip_special_tokens: bool = True,
) -> list[str]:
    """Each completion as text that continues its prompt: decode(prompt + completion) minus decode(prompt).

    Decoding the pair keeps the spacing at the boundary (" a b" after "q" for a word-level tokenizer), so that
    `prompt_text + completion` re-tokenizes to `prompt_ids + completion_ids` whenever the tokenizer's
    decode/encode round-trips, which is how SFT joins a prompt and a completion. `skip_special_tokens=False`
    keeps EOS in the text (then SFT adds no second one). Falls back to decode(completion) where the prompt's
    text is not a prefix of the pair's; without a tokenizer the ids are joined by spaces.
    """
    if tokenizer is None:
        return [" ".join(str(t) for t in c) for c in completion_ids]
    pairs = [list(p) + list(c) for p, c in zip(prompt_ids, completion_ids)]
    heads = tokenizer.batch_decode([list(p) for p in prompt_ids], skip_special_tokens=skip_special_tokens)
    fulls = tokenizer.batch_decode(pairs, skip_special_tokens=skip_special_tokens)
    out = []
    for head, full, c in zip(heads, fulls, completion_ids):
        if full.startswith(head):
            out.append(full[len(head) :])
        else:
            out.append(tokenizer.decode(list(c), skip_special_tokens=skip_special_tokens))
    return out
