"""``gradpack`` command line: one subcommand per module, imported only when used.

Each subcommand module exposes ``add_arguments(parser)`` and ``run(args) -> int``. A bad flag
is one line on stderr and exit status 2 (:mod:`gradpack.cli_types`): argparse reports what it
finds while parsing, and ``run`` raises ``argparse.ArgumentError`` (``cli_types.flag_error``)
for what it finds in its checks, which come before any work or worker process starts.
"""

from __future__ import annotations

import argparse
import importlib
import sys

from gradpack.cli_types import OneLineParser

SUBCOMMANDS = {
    "demo": ("gradpack.demo", "compress a real tensor with every compressor and print a table"),
    "simulate": ("gradpack.sim.cli", "paper-style experiments with n simulated workers"),
    "train": ("gradpack.train.cli", "compressed data-parallel training on local worker processes"),
    "bench": ("gradpack.bench.cli", "kernel throughput against measured memory bandwidth"),
}


def main(argv: list[str] | None = None) -> int:
    parser = OneLineParser(prog="gradpack", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    argv = sys.argv[1:] if argv is None else argv
    parsers = {}
    for name, (module, help_text) in SUBCOMMANDS.items():
        parsers[name] = p = sub.add_parser(name, help=help_text)
        # only the chosen subcommand's module is imported (and must exist)
        if argv and argv[0] == name:
            importlib.import_module(module).add_arguments(p)
    args = parser.parse_args(argv)
    try:
        return int(importlib.import_module(SUBCOMMANDS[args.command][0]).run(args) or 0)
    except argparse.ArgumentError as e:
        parsers[args.command].error(str(e))


if __name__ == "__main__":
    sys.exit(main())
