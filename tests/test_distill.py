"""PowerDistillTrainer: exact sampled ids, the (weighted) loss, bad input, distillation to p_alpha on an enumerable
model (exact samples and weighted SIR particles), LoRA save/load, model card and push (mocked), online mode.

The enumerable model: vocab 5 (0 <eos>, 1 a, 2 b, 3 c, 4 q), prompt "q" = [4], completions of at most T = 3 tokens
(85 of them). Every distribution over completions is computed exactly by enumeration, so TV(student, p_alpha) carries
no evaluation noise.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from datasets import Dataset
from launch import accelerate_launch
from peft import LoraConfig, PeftModel

from trl_power import PowerDistillConfig, PowerDistillTrainer, PowerSamplingConfig, generate_power_dataset
from trl_power.scoring import completion_token_logprobs, sequence_logprobs
from trl_power.theory import (
    empirical_distribution,
    exact_power_distribution,
    expected_tv_bound,
    total_variation,
)
from trl_power.tiny_models import build_model, build_tokenizer

WORDS = ["a", "b", "c", "q"]
PROMPT = [4]
T = 3
ALPHA = 4.0
MODEL_ID = "tiny/random-5"
EPS_OPT = 0.05  # what we ask of the optimiser: TV(student, its teacher sample's distribution) <= EPS_OPT
DELTA = 1e-3


def make_base() -> torch.nn.Module:
    """A fresh copy of the random 5-token model (deterministic from its seed)."""
    model = build_model(5, seed=3, initializer_range=0.25)
    model.config._name_or_path = MODEL_ID
    return model


def make_tokenizer():
    return build_tokenizer(WORDS, with_pad=False)


def lora() -> LoraConfig:
    return LoraConfig(r=8, lora_alpha=16, lora_dropout=0.0, target_modules="all-linear")


def distill_args(tmp: Path, **kwargs) -> PowerDistillConfig:
    defaults = dict(
        output_dir=str(tmp),
        per_device_train_batch_size=64,
        max_steps=300,
        learning_rate=1e-2,
        lr_scheduler_type="cosine",
        logging_steps=50,
        save_strategy="no",
        report_to="none",
        bf16=False,
        gradient_checkpointing=False,
        disable_tqdm=True,
        use_cpu=True,
        seed=0,
    )
    return PowerDistillConfig(**{**defaults, **kwargs})


def student_distribution(model) -> dict:
    """The student's own p(y|x) over all completions, by enumeration."""
    return exact_power_distribution(model, None, PROMPT, 1.0, T)


@pytest.fixture(scope="module")
def targets():
    base = make_base()
    return student_distribution(base), exact_power_distribution(base, None, PROMPT, ALPHA, T)


# ----- configuration ---------------------------------------------------------------------------------------------------


def test_config_sampling_config_forms_and_checks(tmp_path):
    sampling = PowerSamplingConfig(method="smc", alpha=3.0, max_new_tokens=8, num_particles=4)
    cfg = {"output_dir": str(tmp_path), "use_cpu": True, "gradient_checkpointing": False}
    args = PowerDistillConfig(**cfg, sampling_config=sampling)
    assert args.sampling_config == sampling.to_dict() and args.power_sampling_config == sampling
    assert args.alpha == 3.0
    from_json = PowerDistillConfig(**cfg, sampling_config=json.dumps({"method": "sir", "alpha": 2}))
    assert from_json.power_sampling_config.method == "sir" and from_json.alpha == 2.0
    json.loads(args.to_json_string())  # serialisable (logged by Trainer integrations)
    assert PowerDistillConfig(**cfg).power_sampling_config is None
    assert PowerDistillConfig(**cfg).packing is False
    with pytest.raises(ValueError, match="disagrees"):
        PowerDistillConfig(**cfg, sampling_config=sampling, alpha=4.0)
    with pytest.raises(ValueError, match="does not know"):
        PowerDistillConfig(**cfg, sampling_config={"method": "mh", "temperture": 1.0})
    with pytest.raises(ValueError, match="method must be"):
        PowerDistillConfig(**cfg, sampling_config={"method": "beam"})
    with pytest.raises(ValueError, match="teacher_refresh_steps"):
        PowerDistillConfig(**cfg, teacher_refresh_steps=0)


# ----- data: the student learns exactly the sampled ids ------------------------------------------------------------------


@pytest.fixture(scope="module")
def small_teacher():
    """SIR particle sets for two prompts: weighted rows, EOS-ended and truncated completions."""
    config = PowerSamplingConfig(
        method="sir",
        alpha=ALPHA,
        max_new_tokens=T,
        num_particles=8,
        num_samples_per_prompt=2,
        return_all_particles=True,
        proposal_temperature=1.0,
        seed=2,
    )
    return generate_power_dataset(make_base(), make_tokenizer(), ["q", "q a"], config)


def test_training_sequences_are_the_sampled_ids(small_teacher, tmp_path):
    ds = small_teacher
    assert any(ds["truncated"]) and not all(ds["truncated"])
    trainer = PowerDistillTrainer(
        make_base(), distill_args(tmp_path, max_steps=1), train_dataset=ds, processing_class=make_tokenizer()
    )
    prepared = trainer.train_dataset
    assert len(prepared) == len(ds)
    for row, ex in zip(ds, prepared):
        assert ex["input_ids"] == row["prompt_ids"] + row["completion_ids"]
        p = len(row["prompt_ids"])
        assert (
            ex["labels"] == [-100] * p + row["completion_ids"]
        )  # loss on the completion only, EOS as sampled
        assert ex["weight"] == row["weight"]

    # SFTTrainer's text pipeline on the same rows: the text round-trips (same ids) where the teacher generated EOS;
    # a truncated completion gets an EOS appended (which the exact-ids path avoids).
    text = PowerDistillTrainer(
        make_base(),
        distill_args(tmp_path, max_steps=1, use_sampled_ids=False),
        train_dataset=ds,
        processing_class=make_tokenizer(),
    ).train_dataset
    for row, ex in zip(ds, text):
        expected = row["prompt_ids"] + row["completion_ids"] + ([0] if row["truncated"] else [])
        assert ex["input_ids"] == expected


# ----- the loss -------------------------------------------------------------------------------------------------------


def _first_batch(trainer):
    batch = next(iter(trainer.get_train_dataloader()))
    return trainer._prepare_inputs(batch)


def test_weighted_loss_is_self_normalised_and_unit_weights_give_sfts(small_teacher, tmp_path):
    tok = make_tokenizer()
    ds = small_teacher
    n = len(ds)
    args = distill_args(tmp_path, per_device_train_batch_size=n, max_steps=1)

    # unit weights: exactly SFTTrainer's loss (the data set without a weight column goes through SFTTrainer.compute_loss)
    unit = ds.map(lambda r: {"weight": 1.0})
    a = PowerDistillTrainer(make_base(), args, train_dataset=unit, processing_class=tok)
    b = PowerDistillTrainer(
        make_base(), args, train_dataset=ds.remove_columns("weight"), processing_class=tok
    )
    batch_a, batch_b = _first_batch(a), _first_batch(b)
    assert torch.equal(batch_a["input_ids"], batch_b["input_ids"]) and torch.equal(
        batch_a["weight"], torch.ones(n)
    )
    with torch.no_grad():
        loss_a, loss_b = a.compute_loss(a.model, batch_a), b.compute_loss(b.model, batch_b)
    torch.testing.assert_close(loss_a, loss_b, rtol=1e-6, atol=1e-7)

    # particle weights: sum_i w_i NLL_i / sum_i w_i T_i, NLL_i the completion's summed token NLL
    c = PowerDistillTrainer(make_base(), args, train_dataset=ds, processing_class=tok)
    batch = _first_batch(c)
    with torch.no_grad():
        loss = c.compute_loss(c.model, batch)
    prompts, completions = [], []
    for ids, labels, m in zip(batch["input_ids"], batch["labels"], batch["attention_mask"]):
        ids, labels = ids[m.bool()].tolist(), labels[m.bool()].tolist()
        start = next(t for t, label in enumerate(labels) if label != -100)
        prompts.append(ids[:start])
        completions.append(ids[start:])
    lp, mask = completion_token_logprobs(make_base(), prompts, completions)
    w = batch["weight"]
    expected = -(w * (lp * mask).sum(1)).sum() / (w * mask.sum(1)).sum()
    np.testing.assert_allclose(sorted(w.tolist()), sorted(ds["weight"]), rtol=1e-6)
    torch.testing.assert_close(loss, expected.float(), rtol=1e-5, atol=1e-6)
    # the divisor across an accumulated batch is the weighted token count sum_i w_i T_i
    raw = next(iter(c.get_train_dataloader()))
    count = c._get_num_items_in_batch([raw], torch.device("cpu"))
    torch.testing.assert_close(count.float(), (w * mask.sum(1)).sum().float(), rtol=1e-6, atol=1e-6)


# ----- bad input --------------------------------------------------------------------------------------------------------


def test_bad_input_is_refused_before_training(small_teacher, tmp_path):
    tok = make_tokenizer()
    args = distill_args(tmp_path, max_steps=1)

    def trainer(ds, **kw):
        return PowerDistillTrainer(
            make_base(), kw.pop("args", args), train_dataset=ds, processing_class=tok, **kw
        )

    with pytest.raises(ValueError, match="no teacher completions.*generate_power_dataset.*sampling_config"):
        trainer(Dataset.from_dict({"prompt": ["q", "q a"]}))
    with pytest.raises(ValueError, match="empty completion"):
        trainer(Dataset.from_dict({"prompt": ["q", "q"], "completion": [" a <eos>", ""]}))
    with pytest.raises(ValueError, match="empty completion"):
        trainer(
            small_teacher.map(
                lambda r, i: {"completion_ids": [] if i == 3 else r["completion_ids"]}, with_indices=True
            )
        )
    for bad in (-0.5, float("nan"), float("inf")):
        with pytest.raises(ValueError, match="finite and >= 0"):
            trainer(
                small_teacher.map(
                    lambda r, i, b=bad: {"weight": b if i == 1 else r["weight"]}, with_indices=True
                )
            )
    with pytest.raises(ValueError, match="all zero"):
        trainer(small_teacher.map(lambda r: {"weight": 0.0}))
    with pytest.raises(ValueError, match="packing=False"):
        trainer(small_teacher, args=distill_args(tmp_path, max_steps=1, packing=True, max_length=16))
    online = distill_args(
        tmp_path, max_steps=1, sampling_config=PowerSamplingConfig(method="exact", max_new_tokens=T)
    )
    with pytest.raises(ValueError, match="online mode draws its own"):
        trainer(small_teacher, args=online)
    with pytest.raises(ValueError, match="only used in online mode"):
        trainer(small_teacher, teacher_model=make_base())
    with pytest.raises(ValueError, match="was generated with alpha=4.0"):
        trainer(small_teacher, args=distill_args(tmp_path, max_steps=1, alpha=2.0))
    with pytest.raises(TypeError, match="PowerDistillConfig"):
        PowerDistillTrainer(
            make_base(), args=None or object(), train_dataset=small_teacher, processing_class=tok
        )


# ----- distillation reaches p_alpha -----------------------------------------------------------------------------------

N_EXACT = 2000


@pytest.fixture(scope="module")
def exact_student(tmp_path_factory, targets):
    """A LoRA student distilled from N_EXACT exact samples of p_alpha (alpha = 4)."""
    _, p_alpha = targets
    config = PowerSamplingConfig(
        method="exact", alpha=ALPHA, max_new_tokens=T, num_samples_per_prompt=N_EXACT, seed=1
    )
    teacher = generate_power_dataset(make_base(), make_tokenizer(), ["q"], config)
    out = tmp_path_factory.mktemp("exact_student")
    trainer = PowerDistillTrainer(
        make_base(),
        distill_args(out),
        train_dataset=teacher,
        processing_class=make_tokenizer(),
        peft_config=lora(),
    )
    trainer.train()
    return trainer, teacher


def test_exact_samples_distill_to_p_alpha(exact_student, targets):
    """TV(student, p_alpha) <= TV(student, p_hat) + TV(p_hat, p_alpha), p_hat the empirical distribution of the n teacher
    samples (the minimiser of the NLL over all distributions). With probability >= 1 - delta,
    TV(p_hat, p_alpha) <= B_n = 1/2 sum_y sqrt(p_alpha(y)(1 - p_alpha(y))/n) + sqrt(log(1/delta)/(2n))
    (Jensen + McDiarmid, `expected_tv_bound`). So TV(student, p_alpha) <= EPS_OPT + B_n once the optimiser has fitted
    its data to EPS_OPT, and that bound is a small fraction of TV(base, p_alpha)."""
    trainer, teacher = exact_student
    p_base, p_alpha = targets
    student = student_distribution(trainer.model)
    p_hat = empirical_distribution(teacher["completion_ids"])
    bound = expected_tv_bound(p_alpha, N_EXACT, DELTA)
    tv_base, tv_student = total_variation(p_base, p_alpha), total_variation(student, p_alpha)
    print(
        f"exact: TV(base, p_alpha)={tv_base:.4f} TV(p_hat, p_alpha)={total_variation(p_hat, p_alpha):.4f} "
        f"B_n={bound:.4f} TV(student, p_hat)={total_variation(student, p_hat):.4f} TV(student, p_alpha)={tv_student:.4f}"
    )
    assert tv_base > 0.6  # the power distribution is far from the base model
    assert total_variation(p_hat, p_alpha) <= bound
    assert total_variation(student, p_hat) <= EPS_OPT  # the optimiser fitted its teacher sample
    assert tv_student <= EPS_OPT + bound <= 0.2 * tv_base


def test_weighted_sir_particles_distill_to_p_alpha(tmp_path, targets):
    """Weighted particles: R runs of SIR with N particles from the proposal q (temperature 0.5), self-normalised weights
    w ∝ p^alpha / q per run. The weighted NLL is minimised by the weighted empirical distribution p_w = (1/R) sum_r
    pi_r, pi_r a run's weighted particles. With the normalised ratio wbar = p_alpha / q, rho = E_q[wbar^2],
    sigma^2(y) = E_q[wbar^2 (1_y - p_alpha(y))^2] and B = mean of a run's weights (E B = 1):
    pi_r(y) - p_alpha(y) = D_r(y) / B_r with D = mean of wbar (1_y - p_alpha(y)), E D = 0, Var D = sigma^2(y)/N, and
    D/B = D - D (B - 1)/B, sum_y |D(y)|/B = 2 TV(pi_r, p_alpha) <= 2, so (Jensen, Cauchy-Schwarz)

        E TV(p_w, p_alpha) <= 1/2 sum_y sigma(y) / sqrt(N R) + sqrt((rho - 1) / N)        (an expectation bound),

    computed exactly here from p and q. Then TV(student, p_alpha) <= EPS_OPT + TV(p_w, p_alpha)."""
    p_base, p_alpha = targets
    tau, n_particles, runs = 0.5, 256, 16
    base = make_base()
    keys = list(p_alpha)
    log_q = sequence_logprobs(base, [PROMPT] * len(keys), [list(k) for k in keys], temperature=tau).double()
    q = log_q.exp().numpy()
    pi = np.array([p_alpha[k] for k in keys])
    assert abs(q.sum() - 1) < 1e-5  # the proposal's law over all completions
    wbar = pi / q
    rho = float((q * wbar**2).sum())
    one_hot = np.eye(len(keys))
    sigma = np.sqrt([(q * wbar**2 * (one_hot[i] - pi[i]) ** 2).sum() for i in range(len(keys))])
    bound = 0.5 * sigma.sum() / math.sqrt(n_particles * runs) + math.sqrt((rho - 1) / n_particles)

    config = PowerSamplingConfig(
        method="sir",
        alpha=ALPHA,
        max_new_tokens=T,
        num_particles=n_particles,
        num_samples_per_prompt=runs,
        return_all_particles=True,
        proposal_temperature=tau,
        seed=1,
    )
    teacher = generate_power_dataset(base, make_tokenizer(), ["q"], config)
    assert len(teacher) == n_particles * runs
    p_w = empirical_distribution(teacher["completion_ids"], teacher["weight"])
    trainer = PowerDistillTrainer(
        make_base(),
        distill_args(tmp_path),
        train_dataset=teacher,
        processing_class=make_tokenizer(),
        peft_config=lora(),
    )
    trainer.train()
    student = student_distribution(trainer.model)
    tv_base, tv_student = total_variation(p_base, p_alpha), total_variation(student, p_alpha)
    print(
        f"sir: TV(base, p_alpha)={tv_base:.4f} rho={rho:.3f} TV(p_w, p_alpha)={total_variation(p_w, p_alpha):.4f} "
        f"B={bound:.4f} TV(student, p_w)={total_variation(student, p_w):.4f} TV(student, p_alpha)={tv_student:.4f}"
    )
    assert total_variation(p_w, p_alpha) <= bound
    assert total_variation(student, p_w) <= EPS_OPT
    assert tv_student <= EPS_OPT + bound <= 0.25 * tv_base
    # the weights matter: the unweighted particles are samples of the proposal, not of p_alpha
    assert total_variation(empirical_distribution(teacher["completion_ids"]), p_alpha) > 3 * bound


# ----- the LoRA student on disk, model card, push ----------------------------------------------------------------------


def test_lora_student_saves_and_loads_with_identical_logits(exact_student, tmp_path):
    trainer, _ = exact_student
    trainer.save_model(str(tmp_path))
    files = {p.name for p in tmp_path.iterdir()}
    assert {"adapter_model.safetensors", "adapter_config.json", "README.md"} <= files
    assert not files & {"model.safetensors", "pytorch_model.bin"}  # the adapter only, not the base weights

    loaded = PeftModel.from_pretrained(make_base(), str(tmp_path)).eval()
    student = trainer.model.eval()
    ids = torch.tensor([[4, 1, 2, 3, 0], [4, 3, 3, 2, 1]])
    with torch.no_grad():
        assert torch.equal(loaded(input_ids=ids).logits, student(input_ids=ids).logits)  # bit for bit

    # only adapter weights changed: the base weights equal a fresh base, and the LoRA B matrices moved from 0
    fresh = make_base().state_dict()
    base_weights = {
        k.removeprefix("base_model.model.").replace(".base_layer", ""): v
        for k, v in student.state_dict().items()
        if "lora_" not in k
    }
    assert set(base_weights) == set(fresh)
    assert all(torch.equal(base_weights[k], fresh[k]) for k in fresh)
    lora_b = [v for k, v in student.state_dict().items() if "lora_B" in k]
    assert lora_b and all(v.abs().max() > 0 for v in lora_b)


def test_model_card_and_push_to_hub_record_the_distillation(exact_student, tmp_path, monkeypatch):
    """No Hub here: the `HfApi` that `Trainer.push_to_hub` uses is mocked; we check what it would upload."""
    from unittest import mock

    trainer, _ = exact_student
    trainer.args.output_dir = str(tmp_path)
    api = mock.MagicMock()
    api.create_repo.return_value = mock.MagicMock(repo_id="me/power-student")
    monkeypatch.setattr("transformers.trainer.hf_api", lambda: api)
    trainer.hub_model_id = None
    trainer.push_to_hub(dataset_name="me/teacher-data")

    api.create_repo.assert_called_once()
    (call,) = api.upload_folder.call_args_list
    assert call.kwargs["repo_id"] == "me/power-student" and call.kwargs["folder_path"] == str(tmp_path)
    files = {p.name for p in tmp_path.iterdir()}
    assert {"adapter_model.safetensors", "adapter_config.json", "README.md"} <= files
    assert "model.safetensors" not in files
    card = (tmp_path / "README.md").read_text()
    for text in ("alpha: 4.0", "sampler: exact", f"teacher model: {MODEL_ID}", "data set: me/teacher-data"):
        assert text in card
    from huggingface_hub import ModelCard

    record = ModelCard.load(tmp_path / "README.md").data.to_dict()["trl_power"]
    assert record["alpha"] == 4.0 and record["sampler"] == "exact" and record["teacher_model"] == MODEL_ID
    assert (
        record["mode"] == "offline" and record["dataset"] == "me/teacher-data" and record["weighted"] is False
    )
    assert "power-distillation" in ModelCard.load(tmp_path / "README.md").data.to_dict()["tags"]


# ----- online mode -----------------------------------------------------------------------------------------------------


def test_online_mode_samples_the_base_with_the_adapter_disabled(tmp_path, targets, monkeypatch):
    """Teacher samples come from the base weights (adapter off, no second copy), are refreshed every
    `teacher_refresh_steps` steps, and follow p_alpha of the base even after the student has moved."""
    import trl_power.trainers.distill as distill

    _, p_alpha = targets
    per_prompt = 256
    sampling = PowerSamplingConfig(
        method="exact", alpha=ALPHA, max_new_tokens=T, num_samples_per_prompt=per_prompt
    )
    args = distill_args(
        tmp_path,
        sampling_config=sampling,
        teacher_refresh_steps=2,
        max_steps=6,
        per_device_train_batch_size=1,
    )
    prompts = Dataset.from_dict({"prompt": ["q"]})
    trainer = PowerDistillTrainer(
        make_base(), args, train_dataset=prompts, processing_class=make_tokenizer(), peft_config=lora()
    )
    assert trainer._teacher_model is None  # the teacher is the student's own base weights
    base_logits = make_base()(input_ids=torch.tensor([PROMPT])).logits
    calls = []
    original = distill.PowerSampler.sample

    def spy(self, prompts):
        with torch.no_grad():
            logits = self.model(input_ids=torch.tensor([PROMPT])).logits
        out = original(self, prompts)
        calls.append(
            (torch.allclose(logits, base_logits, atol=1e-6), out.completion_ids, trainer.state.global_step)
        )
        return out

    monkeypatch.setattr(distill.PowerSampler, "sample", spy)
    trainer.train()
    assert [step for *_, step in calls] == [0, 2, 4]  # one draw per refresh round of 2 steps
    assert all(is_base for is_base, *_ in calls)  # sampled with the adapter disabled
    with torch.no_grad():
        moved = trainer.model(input_ids=torch.tensor([PROMPT])).logits
    assert not torch.allclose(moved, base_logits, atol=1e-3)  # ... while the student itself has moved
    bound = expected_tv_bound(p_alpha, per_prompt, DELTA)
    for _, completions, _ in calls:
        assert total_variation(empirical_distribution(completions), p_alpha) <= bound
    assert len({tuple(map(tuple, c)) for _, c, _ in calls}) == 3  # fresh samples each round
    logged = {k for h in trainer.state.log_history for k in h}
    assert {"teacher/tokens_forwarded", "teacher/base_logprob", "teacher/samples"} <= logged


def test_online_mode_full_model_uses_a_frozen_copy_as_teacher(tmp_path, targets):
    sampling = PowerSamplingConfig(
        method="exact", alpha=ALPHA, max_new_tokens=T, num_samples_per_prompt=64, seed=3
    )
    args = distill_args(
        tmp_path, sampling_config=sampling, max_steps=3, per_device_train_batch_size=1, learning_rate=1e-3
    )
    trainer = PowerDistillTrainer(
        make_base(),
        args,
        train_dataset=Dataset.from_dict({"prompt": ["q"]}),
        processing_class=make_tokenizer(),
    )
    teacher = trainer._teacher_model
    assert teacher is not None and teacher is not trainer.model
    trainer.train()
    fresh = make_base().state_dict()
    assert all(
        torch.equal(v, fresh[k]) for k, v in teacher.state_dict().items()
    )  # the teacher stayed the base
    assert any(
        not torch.equal(v, fresh[k]) for k, v in trainer.model.state_dict().items()
    )  # the student trained
    with (
        torch.no_grad()
    ):  # the teacher's forward is its own (not routed to the student by the patched forward)
        ids = torch.tensor([PROMPT])
        torch.testing.assert_close(teacher(input_ids=ids).logits, make_base()(input_ids=ids).logits)


# ----- two processes ----------------------------------------------------------------------------------------------------


@pytest.mark.multiprocess
def test_two_processes_weighted_step_equals_the_full_batch_step(small_teacher, tmp_path):
    """`accelerate launch` with 2 CPU processes (gloo): one SGD step on 8 weighted rows split 4 + 4 across the processes
    gives the single-process full-batch update theta - lr * grad[sum_i w_i NLL_i / sum_i w_i T_i] (the weighted token
    count is summed over the processes); online mode runs with each process sampling its own prompts."""

    repo = Path(__file__).resolve().parents[1]
    model_dir = tmp_path / "model"
    make_base().save_pretrained(model_dir)
    make_tokenizer().save_pretrained(model_dir)
    rows = small_teacher.select(range(0, len(small_teacher), 4))
    assert len(rows) == 8 and len(set(rows["weight"])) > 1 and len(set(rows["num_tokens"])) > 1
    rows.save_to_disk(str(tmp_path / "teacher"))

    accelerate_launch(repo / "tests" / "scripts" / "distill_multiprocess.py", model_dir, tmp_path)
    reports = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in range(2)]
    assert {r["distributed_type"] for r in reports} == {"DistributedType.MULTI_CPU"}
    assert [r["offline_steps"] for r in reports] == [1, 1] and [r["online_steps"] for r in reports] == [2, 2]

    model = make_base()
    lp, mask = completion_token_logprobs(model, rows["prompt_ids"], rows["completion_ids"], grad=True)
    w = torch.tensor(rows["weight"])
    loss = -(w * (lp * mask).sum(1)).sum() / (w * mask.sum(1)).sum()
    loss.backward()
    updated = torch.load(tmp_path / "offline.pt")
    for name, param in model.named_parameters():
        torch.testing.assert_close(updated[name], param.detach() - 0.5 * param.grad, rtol=1e-4, atol=1e-6)
    # online: each process drew teacher samples for its own prompt at each step (no prompt sampled twice per step)
    assert [r["online_teacher_calls"] for r in reports] == [2, 2]
    assert sorted(i for r in reports for i in r["online_prompts_sampled"]) == [0, 1]
    assert all("teacher/tokens_forwarded" in r["online_logged"] for r in reports)
