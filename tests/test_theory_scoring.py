import math

import numpy as np
import pytest
import torch
from peft import LoraConfig, get_peft_model

from trl_power import alpha_to_beta, beta_to_alpha, exact_power_distribution
from trl_power.scoring import completion_token_logprobs, sequence_logprobs
from trl_power.theory import (
    empirical_distribution,
    exact_sequence_logprobs,
    expected_tv_bound,
    total_variation,
)
from trl_power.tiny_models import all_completions


def test_alpha_beta_roundtrip_and_errors():
    assert alpha_to_beta(4.0) == pytest.approx(1 / 3)
    assert beta_to_alpha(1 / 3) == pytest.approx(4.0)
    for a in (1.5, 2.0, 8.0):
        assert beta_to_alpha(alpha_to_beta(a)) == pytest.approx(a)
    for bad in (1.0, 0.5, -2.0, float("nan")):
        with pytest.raises(ValueError):
            alpha_to_beta(bad)
    for bad in (0.0, -1.0, float("inf")):
        with pytest.raises(ValueError):
            beta_to_alpha(bad)


def test_scoring_batched_equals_single_and_ignores_padding(random_model):
    prompts = [[4], [4, 1, 2], [3, 4], [4]]
    comps = [[1, 2, 0], [2], [0], [3, 3, 3, 3]]
    batched = sequence_logprobs(random_model, prompts, comps, batch_size=4)
    single = torch.cat([sequence_logprobs(random_model, [p], [c]) for p, c in zip(prompts, comps)])
    torch.testing.assert_close(batched, single, atol=1e-5, rtol=1e-5)
    lp, mask = completion_token_logprobs(random_model, prompts, comps)
    assert mask.sum(1).tolist() == [3, 1, 1, 4]  # EOS counted, padding not
    assert torch.all(lp[mask == 0] == 0)


def test_scoring_matches_chain_rule(random_model):
    """log p(y|x) = sum_t log softmax(model(x, y_<t))[y_t], computed one prefix at a time."""
    prompt, comp = [4, 2], [1, 3, 0]
    total = 0.0
    with torch.no_grad():
        for t in range(len(comp)):
            ids = torch.tensor([prompt + comp[:t]])
            logits = random_model(input_ids=ids).logits[0, -1]
            total += torch.log_softmax(logits.float(), -1)[comp[t]].item()
    assert sequence_logprobs(random_model, [prompt], [comp]).item() == pytest.approx(total, abs=1e-5)


def test_scoring_with_disabled_adapter_is_the_base(random_model):
    import copy

    base = copy.deepcopy(random_model)
    peft = get_peft_model(copy.deepcopy(random_model), LoraConfig(r=4, target_modules=["q_proj", "v_proj"]))
    with torch.no_grad():  # make the adapter non-trivial
        for name, p in peft.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.5)
    prompts, comps = [[4], [4, 1]], [[1, 2, 0], [3]]
    ref = sequence_logprobs(base, prompts, comps)
    torch.testing.assert_close(sequence_logprobs(peft, prompts, comps, disable_adapter=True), ref)
    assert not torch.allclose(sequence_logprobs(peft, prompts, comps), ref)


def test_exact_enumeration_is_a_distribution_and_matches_scoring(random_model):
    logprobs, _ = exact_sequence_logprobs(random_model, None, [4], max_new_tokens=3)
    assert set(logprobs) == set(all_completions(5, 0, 3))
    assert sum(math.exp(v) for v in logprobs.values()) == pytest.approx(1.0, abs=1e-5)
    some = list(logprobs)[::7]
    scored = sequence_logprobs(random_model, [[4]] * len(some), [list(s) for s in some])
    np.testing.assert_allclose(scored.numpy(), [logprobs[s] for s in some], atol=1e-5)
    p4 = exact_power_distribution(random_model, None, [4], alpha=4.0, max_new_tokens=3)
    lp = np.array([logprobs[k] for k in p4])
    expected = np.exp(4 * lp) / np.exp(4 * lp).sum()
    np.testing.assert_allclose(list(p4.values()), expected, rtol=1e-9)


def test_exact_enumeration_refuses_big_models(random_model):
    with pytest.raises(ValueError, match="tiny models"):
        exact_sequence_logprobs(random_model, None, [4], max_new_tokens=4, max_sequences=100)


def test_tv_and_empirical_bound():
    p = {(1,): 0.5, (2,): 0.5}
    assert total_variation(p, {(1,): 1.0}) == pytest.approx(0.5)
    rng = np.random.default_rng(0)
    n = 4000
    draws = rng.choice(2, size=n, p=[0.5, 0.5]) + 1
    emp = empirical_distribution([[d] for d in draws])
    assert total_variation(p, emp) <= expected_tv_bound(p, n)
    with pytest.raises(ValueError):
        empirical_distribution([[1]], weights=[-1.0])
