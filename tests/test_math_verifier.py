"""The math verifier on real MATH-style answer strings: equivalent forms, wrong answers, no boxed answer."""

from __future__ import annotations

import sys

import pytest

pytest.importorskip("math_verify")

from datasets import Dataset  # noqa: E402

from trl_power.math_verifier import (  # noqa: E402
    PROMPT_TEMPLATES,
    MathVerifier,
    check_answer,
    gold_answer,
    last_boxed,
)

# (gold answer as in MATH-500's `answer` column, a model's completion, expected reward)
EQUIVALENT = [
    (r"\frac{14}{3}", r"Adding the parts, $x = \boxed{\dfrac{14}{3}}$."),
    (r"\frac{14}{3}", r"So the total is \boxed{4\frac{2}{3}}."),
    (r"\frac{14}{3}", r"\boxed{14/3}"),
    (r"\frac{14}{3}", r"\boxed{\frac{28}{6}}"),
    (r"\left( 3, \frac{\pi}{2} \right)", r"In polar coordinates the point is $\boxed{(3,\frac{\pi}{2})}$."),
    (r"\frac{\sqrt{2}}{2}", r"\boxed{\frac{1}{\sqrt{2}}}"),
    (r"-\frac{1}{2}", r"The slope is \boxed{-0.5}."),
    ("1000", r"The answer is \boxed{1,000}."),
    ("18", r"She makes \boxed{\$18} every day."),
    (r"\text{(C)}", r"The correct option is \boxed{C}."),
    ("[-2, 7)", r"\boxed{[-2,7)}"),
    (r"\{1,2\}", r"\boxed{\{2, 1\}}"),
    ("y^4-2y^3+7y^2+y-5", r"\boxed{y^4 - 2y^3 + 7y^2 + y - 5}"),
    ("5", r"Solving, \boxed{x = 5}"),
    (r"\begin{pmatrix} 1 \\ 2 \end{pmatrix}", r"\boxed{\begin{pmatrix}1\\2\end{pmatrix}}"),
]
WRONG = [
    (r"\frac{14}{3}", r"\boxed{4.6667}"),  # a rounded decimal is not the fraction
    ("[-2, 7)", r"\boxed{(-2,7)}"),  # open vs half-open interval
    ("6", r"\boxed{6.01}"),
    ("3", r"First I thought \boxed{3}, but checking again the answer is \boxed{4}."),  # the LAST box counts
    (r"\frac{\pi}{3}", r"\boxed{\frac{\pi}{6}}"),
]
NO_BOXED = [
    (r"\frac{14}{3}", r"The answer is $\frac{14}{3}$."),  # right value, but not boxed
    ("5", "x = 5"),
    ("5", r"so the answer is \boxed{5"),  # cut off before the closing brace
    ("5", r"\boxed{}"),
    ("5", ""),
]


@pytest.mark.parametrize(("gold", "completion"), EQUIVALENT)
def test_equivalent_forms_are_right(gold, completion):
    assert check_answer(completion, gold) == 1.0


@pytest.mark.parametrize(("gold", "completion"), WRONG)
def test_wrong_answers_are_wrong(gold, completion):
    assert check_answer(completion, gold) == 0.0


@pytest.mark.parametrize(("gold", "completion"), NO_BOXED)
def test_no_boxed_answer_scores_zero(gold, completion):
    assert check_answer(completion, gold) == 0.0


def test_gold_formats():
    # MATH-500 `answer`, MATH `solution` (last box), GSM8K `#### n` with a thousands separator
    assert gold_answer(r"\frac{14}{3}") == r"\frac{14}{3}"
    assert gold_answer(r"We get $\boxed{\frac{1}{2}}$ in the end.") == r"\frac{1}{2}"
    assert gold_answer("Natalia sold 48/2 = <<48/2=24>>24 clips.\n#### 1,072") == "1072"
    assert check_answer(r"... so she sold \boxed{1072} clips.", "Natalia sold clips.\n#### 1,072") == 1.0
    assert check_answer(r"\boxed{\dfrac12}", r"Hence $\boxed{\frac{1}{2}}$.") == 1.0
    with pytest.raises(ValueError, match="cannot parse the gold"):
        check_answer(r"\boxed{1}", r"\text{}")


def test_last_boxed_balances_braces():
    assert last_boxed(r"\boxed{\frac{a}{b}} and \fbox{\sqrt{\frac{1}{2}}} end") == r"\sqrt{\frac{1}{2}}"
    assert last_boxed("no box") is None


def test_task_interface_and_reward_function():
    """Same interface as the embedded tasks (verify, rewards, extract_answer), and a TRL reward function."""
    data = Dataset.from_dict(
        {
            "prompt": ["What is 1/2 + 1/6?", "What is 2 + 2?"],
            "answer": [r"\frac{2}{3}", "4"],
        }
    )
    verifier = MathVerifier.from_dataset(data)
    completions = [r"1/2 + 1/6 = 4/6 = \boxed{\frac{2}{3}}", r"\boxed{5}"]
    assert verifier.verify(data[0]["prompt"], completions[0]) == 1.0
    assert verifier.rewards(data["prompt"], completions) == [1.0, 0.0]
    assert verifier.extract_answer(completions[0]) == r"\frac{2}{3}"
    # TRL calls reward functions with keyword arguments and the data set columns; completions may be messages
    messages = [[{"role": "assistant", "content": c}] for c in completions]
    assert verifier(prompts=data["prompt"], completions=messages, completion_ids=None) == [1.0, 0.0]
    assert verifier(prompts=data["prompt"], completions=completions[::-1], answer=["5", "4"]) == [1.0, 0.0]
    assert verifier.__name__ == "math"
    # conversational prompts are keys too
    chat = [{"role": "user", "content": "What is 2 + 2?"}]
    assert MathVerifier({"x": "4"}).rewards(["x"], [r"\boxed{4}"]) == [1.0]
    assert MathVerifier([(chat, "4")]).verify(chat, r"\boxed{4}") == 1.0
    with pytest.raises(KeyError, match="No gold answer"):
        verifier.verify("unknown prompt", r"\boxed{4}")
    with pytest.raises(ValueError, match="has no column 'solution'"):
        MathVerifier.from_dataset(data, answer_column="solution")
    with pytest.raises(ValueError, match="two different gold answers"):
        MathVerifier([("p", "1"), ("p", "2")])


def test_prompt_templates():
    assert "\\boxed{}" in PROMPT_TEMPLATES["reasoning_with_sampling"]
    system, user = PROMPT_TEMPLATES["qwen_math"]
    assert system["role"] == "system" and "\\boxed{}" in system["content"] and user["content"] == "{prompt}"


def test_missing_math_verify_gives_install_instructions(monkeypatch):
    monkeypatch.setitem(sys.modules, "math_verify", None)  # `import math_verify` now raises ImportError
    from trl_power import math_verifier

    assert not math_verifier.is_math_verify_available()
    with pytest.raises(ImportError, match=r'pip install "trl-power\[math\]"'):
        MathVerifier({"p": "1"})
    with pytest.raises(ImportError, match="math-verify"):
        check_answer(r"\boxed{1}", "1")
