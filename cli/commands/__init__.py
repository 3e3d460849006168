"""Subcommands of the ``placement`` CLI: each module defines ``COMMAND = Command(...)``."""
