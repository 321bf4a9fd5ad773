"""Running a test script under `accelerate launch` with 2 CPU processes (gloo), shared by the multi-process tests.

On a machine without a GPU, `--multi_gpu` only yields two connected processes when the script's state is
created with `cpu=True` (the scripts under tests/scripts do) or ACCELERATE_USE_CPU is set; the environment
below sets the latter too.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def accelerate_launch(
    script: Path | str, *args: str, config_file: Path | None = None, timeout: int = 300
) -> subprocess.CompletedProcess:
    """`python -m accelerate.commands.launch` of `script` on 2 CPU processes; fails the test on a non-zero exit."""
    command = [sys.executable, "-m", "accelerate.commands.launch"]
    if config_file is not None:
        command += ["--config_file", str(config_file)]
    else:
        command += ["--multi_gpu", "--num_processes", "2", "--num_machines", "1"]
        command += ["--mixed_precision", "no", "--dynamo_backend", "no"]
    command += ["--main_process_port", str(free_port()), str(script), *map(str, args)]
    env = {
        **os.environ,
        "ACCELERATE_USE_CPU": "true",
        "CUDA_VISIBLE_DEVICES": "",
        "OMP_NUM_THREADS": "1",
        "TOKENIZERS_PARALLELISM": "false",
        "PYTHONPATH": str(REPO),
    }
    proc = subprocess.run(command, env=env, cwd=REPO, capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc
