"""Shared tiny models (built offline, deterministic) for the test-suite."""

from __future__ import annotations

import sys

import pytest
import torch

from trl_power.tiny_models import build_model, build_tokenizer, fit_to_distribution, trap_target

# tiny models: one thread is fastest and avoids oversubscription next to multi-process tests
torch.set_num_threads(1)

# vocab: 0 <eos>, 1 a, 2 b, 3 c, 4 q (4 is the prompt token of the enumerable models)
WORDS = ["a", "b", "c", "q"]


@pytest.fixture(scope="session")
def tokenizer():
    return build_tokenizer(WORDS, with_pad=False)


@pytest.fixture(scope="session")
def random_model():
    """A random 5-token model with varied (not peaked, not flat) conditionals."""
    return build_model(5, seed=3, initializer_range=0.25)


@pytest.fixture(scope="session")
def trap_model():
    """p(first=a)=0.6 with many mediocre continuations vs p(first=b)=0.4 with one strong one (b c <eos>)."""
    return fit_to_distribution(build_model(5, seed=0), [4], trap_target(), steps=300)


@pytest.fixture(scope="session")
def wide_model():
    """A larger-vocabulary random model for long chains (cache-equality and batching tests)."""
    return build_model(12, seed=1, initializer_range=0.2, max_position_embeddings=128)


def pytest_terminal_summary(terminalreporter):
    """The table of tests/test_mutations.py: each wrong variant of the maths and the check that caught it."""
    caught = getattr(sys.modules.get("test_mutations"), "CAUGHT", None)
    if caught:
        terminalreporter.write_sep("-", "mutations caught (tests/test_mutations.py)")
        width = max(len(m) for m in caught)
        for mutation, check in sorted(caught.items()):
            terminalreporter.write_line(f"{mutation:<{width}}  <- {check}")
