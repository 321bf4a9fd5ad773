"""Step time of PowerSelfRewardTrainer against its parent given a reward function that recomputes log p_ref.

Both train the same model towards the same optimum p_ref^alpha (beta = 1/(alpha - 1), reward log p_ref):

- `PowerSelfRewardTrainer`: the self-reward is read from the reference pass the KL term already runs;
- `RLOOTrainer` + `logp_ref_reward`: a reward function that runs its own forward pass of a reference copy,
  the way one would write the self-reward with TRL alone.

Same model, prompts, batch, generation length and seed; one run of each, `--steps` timed steps after `--warmup`
untimed ones. The tiny random model rarely emits EOS (1 / vocab per token), so completions run to
`--completion-length` in both runs and the work per step is the same.

    python benchmarks/self_reward_step.py            # defaults below; prints a markdown table
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import tempfile
import time
from pathlib import Path

import torch
from datasets import Dataset
from transformers import AutoModelForCausalLM, PrinterCallback, TrainerCallback
from trl import RLOOConfig, RLOOTrainer

from trl_power import PowerSelfRewardConfig, PowerSelfRewardTrainer
from trl_power.scoring import sequence_logprobs
from trl_power.tiny_models import build_model, build_tokenizer
from trl_power.trainers.utils import CPU_RUN


class StepTimer(TrainerCallback):
    def __init__(self) -> None:
        self.times: list[float] = []
        self._start = 0.0

    def on_step_begin(self, args, state, control, **kwargs):
        self._start = time.perf_counter()

    def on_step_end(self, args, state, control, **kwargs):
        self.times.append(time.perf_counter() - self._start)


def make_logp_ref_reward(model_dir: str, tokenizer):
    """A TRL reward function computing log p_ref(y|x) with its own forward pass of a frozen reference copy."""
    reference = AutoModelForCausalLM.from_pretrained(model_dir).eval()

    def logp_ref_reward(prompts, completion_ids, **kwargs):
        prompt_ids = tokenizer(list(prompts))["input_ids"]
        return sequence_logprobs(reference, prompt_ids, completion_ids, batch_size=len(prompt_ids)).tolist()

    return logp_ref_reward


def run(kind: str, model_dir: str, args: argparse.Namespace, words: list[str]) -> list[float]:
    common = dict(
        output_dir=str(Path(model_dir) / f"out-{kind}"),
        per_device_train_batch_size=args.batch_size,
        num_generations=args.num_generations,
        max_completion_length=args.completion_length,
        learning_rate=1e-4,
        max_steps=args.warmup + args.steps,
        logging_steps=10_000,
        **CPU_RUN,
        disable_dropout=True,
        seed=0,
    )
    tokenizer = build_tokenizer(words, with_pad=False)
    dataset = Dataset.from_dict({"prompt": [" ".join(words[i : i + 8]) for i in range(0, 64 * 8, 8)]})
    timer = StepTimer()
    if kind == "power":
        trainer = PowerSelfRewardTrainer(
            model=model_dir,
            args=PowerSelfRewardConfig(alpha=args.alpha, **common),
            train_dataset=dataset,
            processing_class=tokenizer,
            callbacks=[timer],
        )
    else:
        trainer = RLOOTrainer(
            model=model_dir,
            reward_funcs=make_logp_ref_reward(model_dir, build_tokenizer(words, with_pad=False)),
            args=RLOOConfig(beta=1.0 / (args.alpha - 1.0), **common),
            train_dataset=dataset,
            processing_class=tokenizer,
            callbacks=[timer],
        )
    trainer.remove_callback(PrinterCallback)  # keep the output to the table
    trainer.train()
    return timer.times[args.warmup :]


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--vocab", type=int, default=512)
    parser.add_argument("--hidden", type=int, default=256)
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--heads", type=int, default=4)
    parser.add_argument("--batch-size", type=int, default=16, help="completions per step")
    parser.add_argument("--num-generations", type=int, default=8)
    parser.add_argument("--completion-length", type=int, default=64)
    parser.add_argument("--alpha", type=float, default=4.0)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads")
    parser.add_argument("--json", type=str, default=None, help="also write the results here")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    words = [f"w{i}" for i in range(args.vocab - 1)]  # + EOS = vocab
    with tempfile.TemporaryDirectory() as tmp:
        tokenizer = build_tokenizer(words, with_pad=False)
        model = build_model(
            vocab_size=len(tokenizer),
            arch="llama",  # a word-level tokenizer next to a Qwen2 config reloads as Qwen2Tokenizer (extra pad id)
            hidden_size=args.hidden,
            num_layers=args.layers,
            num_heads=args.heads,
            max_position_embeddings=256,
        )
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        n_params = sum(p.numel() for p in model.parameters())
        results = {kind: run(kind, tmp, args, words) for kind in ("power", "rloo+logp_ref_reward")}

    def stats(times: list[float]) -> tuple[float, float, float]:
        return statistics.mean(times), statistics.stdev(times), statistics.median(times)

    power, naive = stats(results["power"]), stats(results["rloo+logp_ref_reward"])
    print(
        f"model: llama, vocab {args.vocab}, hidden {args.hidden}, {args.layers} layers ({n_params / 1e6:.2f}M params); "
        f"{args.batch_size} completions/step ({args.num_generations} per prompt), {args.completion_length} new tokens; "
        f"torch {torch.__version__}, {args.threads} thread(s), {platform.processor() or platform.machine()}, "
        f"load average {os.getloadavg()[0]:.2f}"
    )
    print()
    print("| trainer | step time mean (s) | std (s) | median (s) | steps |")
    print("|---|---|---|---|---|")
    print(f"| PowerSelfRewardTrainer | {power[0]:.3f} | {power[1]:.3f} | {power[2]:.3f} | {args.steps} |")
    print(
        f"| RLOOTrainer + reward fn recomputing log p_ref | {naive[0]:.3f} | {naive[1]:.3f} | {naive[2]:.3f} | "
        f"{args.steps} |"
    )
    print()
    print(f"speed-up (mean): {naive[0] / power[0]:.3f}x; saved per step: {naive[0] - power[0]:.3f} s")
    if args.json:
        Path(args.json).write_text(json.dumps({"args": vars(args), "step_times": results}, indent=1))


if __name__ == "__main__":
    main()
