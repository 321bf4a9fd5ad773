"""Copy TRL's packaged accelerate configs into accelerate_configs/, byte for byte, so that TRL users' command

    accelerate launch --config_file accelerate_configs/zero3.yaml recipes/power_distill.py ...

works in this repository as in TRL's examples. Run after a TRL bump (`python tools/sync_accelerate_configs.py`);
tests/test_cli.py fails while a copy differs from the installed TRL's. `single_gpu.yaml` (TRL's sets
num_processes 8) and `multi_cpu.yaml` (TRL has none) are this project's own and are not touched.
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path

DESTINATION = Path(__file__).resolve().parents[1] / "accelerate_configs"
OWN = {"single_gpu.yaml", "multi_cpu.yaml"}


def trl_configs() -> dict[str, bytes]:
    """{file name: contents} of the configs TRL ships (`trl/accelerate_configs/*.yaml`) that we copy."""
    files = resources.files("trl.accelerate_configs").iterdir()
    return {f.name: f.read_bytes() for f in files if f.name.endswith(".yaml") and f.name not in OWN}


def main() -> None:
    for name, data in sorted(trl_configs().items()):
        path = DESTINATION / name
        state = "unchanged" if path.exists() and path.read_bytes() == data else "written"
        if state == "written":
            path.write_bytes(data)
        print(f"{path.relative_to(DESTINATION.parent)}: {state}")


if __name__ == "__main__":
    main()
