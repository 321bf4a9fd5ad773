"""Prompts: the templates models are evaluated with, a data set row made into a prompt, a prompt made into token ids.

A prompt is text, conversational messages ([{"role", "content"}, ...], formatted with the tokenizer's chat template)
or token ids. `tokenize_prompt` is the one tokenisation of the project (samplers, teacher data, trainers, scoring):
text with the tokenizer's special tokens, messages with `apply_chat_template(add_generation_prompt=True)`, exactly
as TRL's `SFTTrainer` tokenizes a prompt.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

import numpy as np

#: The system prompt of Qwen2.5-Math's chain-of-thought evaluation.
QWEN_MATH_SYSTEM_PROMPT = "Please reason step by step, and put your final answer within \\boxed{}."

#: Prompt templates, `{prompt}` standing for the problem text. A string template gives a text prompt; a list of
#: messages gives a conversational prompt (formatted with the tokenizer's chat template when tokenized).
PROMPT_TEMPLATES: dict[str, str | list[dict[str, str]]] = {
    "qwen_math": [
        {"role": "system", "content": QWEN_MATH_SYSTEM_PROMPT},
        {"role": "user", "content": "{prompt}"},
    ],
    "reasoning_with_sampling": "Can you solve the following math problem? {prompt} Please reason step by step, "
    "and put your final answer within \\boxed{}.",
}


def prompt_format(prompt: Any) -> str:
    """`"text"` (a string), `"conversational"` (a list of {"role", "content"} messages) or `"ids"` (token ids)."""
    if isinstance(prompt, str):
        return "text"
    if isinstance(prompt, Sequence) and len(prompt) > 0:
        if all(isinstance(m, dict) and "role" in m and "content" in m for m in prompt):
            return "conversational"
        if all(isinstance(t, int | np.integer) and not isinstance(t, bool) for t in prompt):
            return "ids"
    raise ValueError(
        "Each prompt must be a string, a non-empty list of {'role', 'content'} messages, or a non-empty list of "
        f"token ids; got {prompt!r:.200}."
    )


def tokenize_prompt(tokenizer: Any, prompt: Any) -> list[int]:
    """The token ids a prompt is answered from, exactly as TRL's `SFTTrainer` tokenizes a prompt.

    text: `tokenizer(prompt)` (special tokens added, as `PowerSampler` and `SFTTrainer` both do);
    conversational: `tokenizer.apply_chat_template(prompt, add_generation_prompt=True)`; ids: as given.
    """
    kind = prompt_format(prompt)
    if kind == "ids":
        return [int(t) for t in prompt]
    if tokenizer is None:
        raise ValueError("Text and conversational prompts need a tokenizer.")
    if kind == "text":
        ids = list(tokenizer(text=prompt)["input_ids"])
    else:
        if getattr(tokenizer, "chat_template", None) is None:
            raise ValueError("Conversational prompts need a tokenizer with a chat template.")
        ids = list(
            tokenizer.apply_chat_template(
                prompt, tokenize=True, add_generation_prompt=True, return_dict=True
            )["input_ids"]
        )
    if not ids:
        raise ValueError(f"The prompt {prompt!r:.100} tokenizes to no tokens.")
    return ids


_FIELD = re.compile(r"\{(\w+)\}")


def template_fields(template: str | None) -> list[str]:
    """The {column} fields a format-string template reads (none for `None` and template names)."""
    if template is None or template in PROMPT_TEMPLATES:
        return []
    fields = _FIELD.findall(template)
    if not fields:
        raise ValueError(
            f"prompt_template {template!r} is neither a template name ({sorted(PROMPT_TEMPLATES)}) nor a format "
            "string with a {prompt} or {column} field."
        )
    return fields


def format_prompt(template: str | None, row: dict[str, Any], prompt_column: str = "prompt") -> Any:
    """The prompt of one row: text, or conversational messages for chat templates."""
    problem = row[prompt_column]
    if template is None:
        return problem
    if template in PROMPT_TEMPLATES:
        spec, values = PROMPT_TEMPLATES[template], {"prompt": problem}
    else:
        spec, values = template, {**row, "prompt": problem}

    def fill(text: str) -> str:  # only {name} fields are replaced: LaTeX braces such as \boxed{} stay
        return _FIELD.sub(lambda m: str(values[m.group(1)]) if m.group(1) in values else m.group(0), text)

    if isinstance(spec, list):
        return [{**m, "content": fill(m["content"])} for m in spec]
    return fill(spec)
