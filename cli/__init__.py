"""The roof: the ``placement`` command line, one entry point with one module per subcommand in
:mod:`moe_placement.cli.commands`. Handlers parse, call the floors below, and write; nothing imports
this package."""

from moe_placement.cli.main import main

__all__ = ["main"]
