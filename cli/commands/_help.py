"""Help that teaches: every option's default, the names an option takes, and the package's version.

:class:`HelpFormatter` is the formatter of ``placement`` and of every subcommand
(:func:`moe_placement.cli.main.build_parser`). It adds ``(default: X)`` to each option that takes a
value and has one, unless its text already says its default; an option without help text still gets
its default. Options whose names come from a registry write ``{solvers}`` or ``{clusters}`` in their
help; the names are filled in only when help is printed, so that building the parser imports no solver.
"""

from __future__ import annotations

import argparse
import textwrap
from importlib import metadata


def version() -> str:
    """The installed package's version (``unknown`` when run from an uninstalled tree)."""
    try:
        return metadata.version("moe-placement")
    except metadata.PackageNotFoundError:
        return "unknown"


def _shows_default(action: argparse.Action) -> bool:
    """Options that take a value and have a default worth saying (flags have none to say)."""
    if not action.option_strings or action.nargs == 0:
        return False
    default = action.default
    return default is not None and default is not argparse.SUPPRESS and default != []


def _names(key: str) -> str:
    if key == "solvers":
        from moe_placement.solvers import REGISTRY

        return ", ".join(sorted(REGISTRY))
    from moe_placement.cluster import PRESETS

    return ", ".join(PRESETS)


class HelpFormatter(argparse.HelpFormatter):
    """argparse's formatter with defaults shown and registry names filled in (see the module)."""

    def add_argument(self, action: argparse.Action) -> None:
        if not action.help and _shows_default(action):
            action.help = "(default: %(default)s)"
        super().add_argument(action)

    def _get_help_string(self, action: argparse.Action) -> str | None:
        text = action.help or ""
        if _shows_default(action) and "default" not in text:
            text += " (default: %(default)s)"
        return text

    def _split_lines(self, text: str, width: int) -> list[str]:
        # names such as a100-fat-tree or --wall-clock stay whole on one line
        return textwrap.wrap(" ".join(text.split()), width, break_on_hyphens=False)

    def _expand_help(self, action: argparse.Action) -> str:
        text = super()._expand_help(action)
        for key in ("solvers", "clusters"):
            if "{" + key + "}" in text:
                text = text.replace("{" + key + "}", _names(key))
        return text
