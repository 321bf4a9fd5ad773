"""The `trl-power` command (also `python -m trl_power`)."""

from __future__ import annotations

import argparse
import sys


def _demo(args: argparse.Namespace) -> int:
    from trl_power.demo import run_sampling_demo

    run_sampling_demo(alpha=args.alpha, num_samples=args.num_samples, seed=args.seed, quick=args.quick)
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="trl-power", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    demo = sub.add_parser(
        "demo",
        help="Show power sampling on an offline tiny model (no network, about a minute on 2 CPU cores).",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    demo.add_argument("--alpha", type=float, default=4.0, help="the power alpha")
    demo.add_argument("--num_samples", type=int, default=1000, help="samples per method")
    demo.add_argument("--seed", type=int, default=0, help="seed of every random draw")
    demo.add_argument("--quick", action="store_true", help="fewer samples, for tests")
    demo.set_defaults(func=_demo)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
