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
from pathlib import Path
from typing import Any

from moe_placement import interrupt
from moe_placement.atomic import os_cause, remove_leftovers
from moe_placement.cli import commands
from moe_placement.cli.commands._common import (
    CheckFailed,
    Command,
    non_negative_float,
    non_negative_int,
    positive_float,
    positive_int,
)
from moe_placement.cli.commands._help import HelpFormatter, version
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
# Commands whose --out is a folder (every other output names a file, or a file prefix for --chakra).
_FOLDER_OUT_COMMANDS = ("whatif", "demo")


# Numeric options that must be > 0, by destination; every other ``type=int``/``type=float`` option must
# be >= 0 (counts, sizes, indices, seeds, times, weights). Checked where argparse parses them, so a bad
# number is a usage error (one line, exit 2) before any work starts. (--workers, --tokens, --rounds,
# --node-limit, --window and --hidden-scale are refused at 0 by their commands, exit 2 from main().)
_POSITIVE_DESTS = frozenset(
    {
        "gpus",
        "gpus_per_node",
        "threads",
        "time_limit",
        "time_limit_s",
        "timeout",
        "amortisation_years",
        "tokens_per_gpu",
        "synth_layers",
        "synth_tokens",
        "layers",
        "experts",
        "top_k",
        "hidden",
        "intermediate",
        "seq_len",
        "group_size",
        "domains",
        "batch",
        "prompt_len",
        "new_tokens",
        "reps",
        "chunks",
        "total_layers",
        "cache_experts",
        "num_cpus",
    }
)


class _Parser(argparse.ArgumentParser):
    """argparse with a one-line error and exit code 2. ``type=int`` and ``type=float`` options are
    checked as they are parsed: integers >= 0 (>= 1 for the counts in ``_POSITIVE_DESTS``), floats
    finite and >= 0 (> 0 for those), so NaN, infinities and negative seeds never reach the code."""

    def add_argument(self, *args: Any, **kwargs: Any) -> argparse.Action:
        action = super().add_argument(*args, **kwargs)
        positive = action.dest in _POSITIVE_DESTS
        if action.type is int:
            action.type = positive_int if positive else non_negative_int
        elif action.type is float:
            action.type = positive_float if positive else non_negative_float
        return action

    def _get_values(self, action: argparse.Action, arg_strings: list[str]) -> Any:
        # argparse drops a "--" value ("--seed=--") and hands the option an empty list
        if action.option_strings and action.nargs is None and arg_strings == ["--"]:
            self.error(f"argument {'/'.join(action.option_strings)}: expected one value, got '--'")
        return super()._get_values(action, arg_strings)

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
        formatter_class=HelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"placement {version()}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    for command in discover():
        p = sub.add_parser(
            command.name,
            help=command.help,
            description=command.help,
            formatter_class=HelpFormatter,  # defaults shown, registry names listed
        )
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


def _is_folder_output(command: str, dest: str) -> bool:
    return dest == "plots" or (dest == "out" and command in _FOLDER_OUT_COMMANDS)


def refuse_unwritable_outputs(args: argparse.Namespace) -> None:
    """Refuse, before any work, an output whose place is taken: a parent that is a file, a folder
    where a file is due, or a file where a folder is due. Other faults (read-only, full disk, no
    permission) surface from :mod:`moe_placement.atomic` when the write happens, naming the path."""
    for dest in _OUTPUT_DESTS:
        for path in map(Path, _paths(getattr(args, dest, None))):
            option = _option_name(dest)
            for parent in path.parents:
                if parent.exists() and not parent.is_dir():
                    raise PlacementError(f"{option} {path}: {parent} is a file, not a folder")
            folder = _is_folder_output(args.command, dest)
            if folder and path.exists() and not path.is_dir():
                raise PlacementError(f"{option} {path} is a file; it must be a folder")
            if not folder and path.is_dir():
                raise PlacementError(f"{option} {path} is a folder; give a file path")


def _os_error_line(exc: OSError) -> str:
    """ "PATH: cause" (both paths for a failed rename or copy); one line whatever the error holds."""
    cause = os_cause(exc)
    paths = [str(p) for p in (exc.filename, exc.filename2) if p is not None]
    return f"{' -> '.join(paths)}: {cause}" if paths else cause


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "_run", None):
        parser.print_help()
        return 2
    try:
        refuse_outputs_onto_inputs(args)
        refuse_unwritable_outputs(args)
        with interrupt.sigterm_unwinds():
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
        remove_leftovers()
        sys.stderr.write("placement: interrupted\n")
        return 130
    except interrupt.Terminated:  # SIGTERM: clean-ups ran while unwinding
        remove_leftovers()  # and a file the signal caught as it was made
        sys.stderr.write(f"placement {args.command}: terminated\n")
        return 143
    except MemoryError:
        sys.stderr.write(
            f"placement {args.command}: error: out of memory; use a smaller input or limit\n"
        )
        return 2
    except OSError as exc:  # the last line of defence: loaders and atomic writes name their files
        sys.stderr.write(f"placement {args.command}: error: {_os_error_line(exc)}\n")
        return 2
    except UnicodeDecodeError as exc:
        sys.stderr.write(
            f"placement {args.command}: error: an input file is not UTF-8 text "
            f"(byte {exc.object[exc.start : exc.start + 1]!r} at offset {exc.start})\n"
        )
        return 2


if __name__ == "__main__":
    raise SystemExit(main())
