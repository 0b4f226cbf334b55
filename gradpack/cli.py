"""``gradpack`` command line: one subcommand per module, imported only when used.

Each subcommand module exposes ``add_arguments(parser)`` and ``run(args) -> int``.
"""

from __future__ import annotations

import argparse
import importlib
import sys

SUBCOMMANDS = {
    "demo": ("gradpack.demo", "compress a real tensor with every compressor and print a table"),
    "simulate": ("gradpack.sim.cli", "paper-style experiments with n simulated workers"),
    "train": ("gradpack.train.cli", "compressed data-parallel training on local worker processes"),
    "bench": ("gradpack.bench.cli", "kernel throughput against measured memory bandwidth"),
}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="gradpack", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    argv = sys.argv[1:] if argv is None else argv
    for name, (module, help_text) in SUBCOMMANDS.items():
        p = sub.add_parser(name, help=help_text)
        # only the chosen subcommand's module is imported (and must exist)
        if argv and argv[0] == name:
            importlib.import_module(module).add_arguments(p)
    args = parser.parse_args(argv)
    return int(importlib.import_module(SUBCOMMANDS[args.command][0]).run(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
