"""The ``placement`` command line: one entry point, one module per subcommand in
:mod:`moe_placement.cli.commands` (discovered automatically, so components add commands without touching this file).

Exit codes: 0 success, 1 a check failed, 2 bad input or usage (one line on stderr, no traceback).
"""

from __future__ import annotations

import argparse
import importlib
import os
import pkgutil
import sys
from collections.abc import Sequence
from typing import Any

from moe_placement.cli import commands
from moe_placement.cli.commands._common import CheckFailed, Command, finite_float
from moe_placement.errors import PlacementError

# Argument destinations that name files a command reads, and files or folders it writes. An output that
# is one of the inputs would be replaced by the atomic rename: the input would be destroyed with exit 0.
_INPUT_DESTS = (
    "trace",
    "plan",
    "current",
    "baseline",
    "baseline_plan",
    "cluster",
    "compare",
    "input",
    "model",
)
_OUTPUT_DESTS = ("out", "chrome_trace", "chakra", "junit", "plots")


class _Parser(argparse.ArgumentParser):
    """argparse with a one-line error and exit code 2; every float option refuses NaN and infinities."""

    def add_argument(self, *args: Any, **kwargs: Any) -> argparse.Action:
        if kwargs.get("type") is float:
            kwargs["type"] = finite_float
        return super().add_argument(*args, **kwargs)

    def error(self, message: str) -> None:  # type: ignore[override]
        sys.stderr.write(f"{self.prog}: error: {message}\n")
        raise SystemExit(2)


def discover() -> list[Command]:
    found: list[Command] = []
    for info in sorted(pkgutil.iter_modules(commands.__path__), key=lambda m: m.name):
        if info.name.startswith("_"):
            continue
        module = importlib.import_module(f"moe_placement.cli.commands.{info.name}")
        command = getattr(module, "COMMAND", None)
        if isinstance(command, Command):
            found.append(command)
    return sorted(found, key=lambda c: c.name)


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="placement",
        description="Expert placement for Mixture-of-Experts models: traces, solvers, simulator, reports.",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    for command in discover():
        p = sub.add_parser(command.name, help=command.help, description=command.help)
        command.add_arguments(p)
        p.set_defaults(_run=command.run)
    return parser


def _paths(value: Any) -> list[str]:
    if isinstance(value, str):
        return [value]
    if isinstance(value, (list, tuple)):
        return [v for v in value if isinstance(v, str)]
    return []


def _option_name(dest: str) -> str:
    return "IN" if dest == "input" else f"--{dest.replace('_', '-')}"


def refuse_outputs_onto_inputs(args: argparse.Namespace) -> None:
    """Raise if an output path is one of the command's input files (same file after resolving links)."""
    inputs = {
        os.path.realpath(path): _option_name(dest)
        for dest in _INPUT_DESTS
        for path in _paths(getattr(args, dest, None))
        if os.path.exists(path)
    }
    for dest in _OUTPUT_DESTS:
        for path in _paths(getattr(args, dest, None)):
            source = inputs.get(os.path.realpath(path))
            if source is not None:
                raise PlacementError(
                    f"{_option_name(dest)} {path} is also the input {source}; "
                    "writing it would destroy the input: choose another output path"
                )


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "_run", None):
        parser.print_help()
        return 2
    try:
        refuse_outputs_onto_inputs(args)
        return int(args._run(args) or 0)
    except PlacementError as exc:
        sys.stderr.write(f"placement {args.command}: error: {exc}\n")
        return 2
    except CheckFailed as exc:
        sys.stderr.write(f"placement {args.command}: check failed: {exc}\n")
        return 1
    except BrokenPipeError:  # output piped into head & co.: not an error
        sys.stderr.close()
        return 0
    except KeyboardInterrupt:
        sys.stderr.write("placement: interrupted\n")
        return 130
    except MemoryError:
        sys.stderr.write(
            f"placement {args.command}: error: out of memory; use a smaller input or limit\n"
        )
        return 2


if __name__ == "__main__":
    raise SystemExit(main())
