"""User-facing errors: the CLI prints their message on one line and exits 2."""


class PlacementError(ValueError):
    """Bad input or an impossible request, explained in one line for the user."""


class InfeasibleError(PlacementError):
    """The placement problem has no solution (too few slots, too little memory, ...)."""
