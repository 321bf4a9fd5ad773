"""`PowerSelfRewardTrainer` with TRL's vLLM colocate mode on CPU, run by tests/test_vllm_engine.py in its own process
(TRL builds an in-process engine on a one-process torch.distributed group, which must not leak into the test session):

    python tests/scripts/self_reward_vllm.py MODEL_DIR OUT_DIR [peft]

Writes OUT_DIR/result.json: whether the completions came from vLLM, the logged metric names, whether the weights
moved, and the per-token log-probs of fixed completions under the engine before training, under the engine after
training and one more sync, and under the trained model itself (transformers, float32); then a sync that loads only
the final norm: its error (every other layer got no weights) and the engine's log-probs after it. With `peft`, the model trains
a LoRA adapter on `embed_tokens` and `v_proj` (TRL's sync merges it, loads the merged weights, unmerges it; TRL's
RLOO refuses LoRA on `lm_head`, whose vLLM layer is the same padded-vocabulary kind as the embedding's), and the
result also holds the largest |lora_embedding_A| of `embed_tokens` (PEFT starts it at zero) and the log-probs of the trained model with the
`embed_tokens` adapter switched off: what an engine that kept the base embedding gives.
"""

from __future__ import annotations

import functools
import json
import sys
from pathlib import Path

import torch
import trl.generation.vllm_generation as trl_vllm

from trl_power.sampling.vllm_engine import weights_reloaded_in_place
from trl_power.scoring import completion_token_logprobs
from trl_power.trainers.utils import CPU_RUN

# fixed (prompt, completion) token ids: q -> a b <eos>, q a -> c <eos> (vocab: 0 <eos>, 1 a, 2 b, 3 c, 4 q)
FIXED = [([4], [1, 2, 0]), ([4, 1], [3, 0])]


def engine_logprobs(llm) -> list[list[float]]:
    """log p(completion token | prefix) under the engine: its raw prompt log-probs of prompt + completion."""
    from vllm import SamplingParams

    requests = [{"prompt_token_ids": p + c} for p, c in FIXED]
    outputs = llm.generate(requests, SamplingParams(max_tokens=1, prompt_logprobs=0), use_tqdm=False)
    return [
        [out.prompt_logprobs[len(p) + t][token].logprob for t, token in enumerate(c)]
        for out, (p, c) in zip(outputs, FIXED)
    ]


def model_logprobs(model) -> list[list[float]]:
    with torch.no_grad():
        lp, _ = completion_token_logprobs(model.eval(), [p for p, _ in FIXED], [c for _, c in FIXED])
    return [lp[i, : len(c)].tolist() for i, (_, c) in enumerate(FIXED)]


def main(model_dir: str, out_dir: str, peft: bool = False) -> None:
    from datasets import Dataset
    from peft import LoraConfig
    from transformers import PreTrainedTokenizerFast

    from trl_power import PowerSelfRewardConfig, PowerSelfRewardTrainer

    torch.set_num_threads(1)
    # TRL builds the colocated engine with vLLM's dtype "auto", which runs a float32 checkpoint in bf16 on this
    # platform (log-probs then differ from the model's by ~0.01 nats); the comparison below needs float32
    trl_vllm.LLM = functools.partial(trl_vllm.LLM, dtype="float32")
    args = PowerSelfRewardConfig(
        output_dir=out_dir,
        per_device_train_batch_size=4,
        num_generations=4,
        max_completion_length=3,
        max_steps=2,
        learning_rate=5e-2 if peft else 1e-2,  # the adapter starts at zero: larger steps move it
        logging_steps=1,
        use_vllm=True,
        vllm_mode="colocate",
        vllm_gpu_memory_utilization=0.3,  # on CPU: of the NUMA node's host memory
        vllm_max_model_length=16,
        **CPU_RUN,
    )
    lora = LoraConfig(r=8, lora_alpha=16, target_modules=["embed_tokens", "v_proj"], task_type="CAUSAL_LM")
    trainer = PowerSelfRewardTrainer(
        model=model_dir,
        args=args,
        train_dataset=Dataset.from_dict({"prompt": ["q", "q a"] * 8}),
        processing_class=PreTrainedTokenizerFast.from_pretrained(model_dir),
        peft_config=lora if peft else None,
    )
    before = {n: p.detach().clone() for n, p in trainer.model.named_parameters()}
    llm = trainer.vllm_generation.llm
    engine_before, model_before = engine_logprobs(llm), model_logprobs(trainer.model)
    calls = []
    original = llm.generate

    def spy(*a, **k):
        calls.append(1)
        return original(*a, **k)

    llm.generate = spy
    trainer.train()
    llm.generate = original
    trainer.vllm_generation.sync_weights()  # the last step's update: the engine held the weights before it
    result = {
        "engine_before": engine_before,
        "model_before": model_before,
        "engine_after": engine_logprobs(llm),
        "model_after": model_logprobs(trainer.model),
        "vllm_generate_calls": len(calls),
        "logged": sorted({k for h in trainer.state.log_history for k in h}),
        "moved": any(not torch.equal(p, before[n]) for n, p in trainer.model.named_parameters()),
        "self_reward": [h["self_reward/mean"] for h in trainer.state.log_history if "self_reward/mean" in h],
    }
    if peft:
        lora_a = trainer.model.base_model.model.model.embed_tokens.lora_embedding_A["default"]
        result["embed_lora_a"] = lora_a.abs().max().item()
        saved = lora_a.detach().clone()
        with torch.no_grad():
            lora_a.zero_()
            result["model_base_embedding"] = model_logprobs(trainer.model)
            lora_a.copy_(saved)
    # a sync that misses layers: an error naming them, and the engine left usable on the weights it had
    (norm,) = [p.data for n, p in trainer.model.named_parameters() if n.endswith("model.norm.weight")]
    try:
        with weights_reloaded_in_place(llm):
            engine_model = llm.llm_engine.model_executor.driver_worker.model_runner.model
            engine_model.load_weights([("model.norm.weight", norm)])
    except RuntimeError as error:
        result["partial_sync_error"] = str(error)
    result["engine_after_partial_sync"] = engine_logprobs(llm)
    Path(out_dir).mkdir(parents=True, exist_ok=True)
    (Path(out_dir) / "result.json").write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2], peft=sys.argv[3:] == ["peft"])
