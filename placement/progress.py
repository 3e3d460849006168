"""What a long step is doing, said on stderr: one way for every floor (no I/O beyond stderr, no imports).

A step that takes over about 2 s (starting Ray, calibrating workers, replaying a plan, solving) says what
it does as it starts, one line ``placement: <what>...`` on stderr, so that a user at a terminal never
waits on silence; stdout keeps only results. Like tqdm's bars here (``disable=None``), the lines appear
when stderr is a terminal, so that piped output and the one-line error contract (exit 2, one line on
stderr) stay as they are. ``PLACEMENT_PROGRESS=1`` shows them anyway (a CI log), ``=0`` never.

Third-party noise is filtered here too, by logger name, without importing the library:
:func:`quiet_ray_token_notice` drops Ray's "token authentication is enabled" notice, printed by every
local ``ray.init`` (its warning that authentication is *disabled* stays).
"""

from __future__ import annotations

import logging
import os
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager

ENV = "PLACEMENT_PROGRESS"

# Ray (2.5x) logs this on every local ray.init that turns token authentication on by default.
_RAY_TOKEN_LOGGER = "ray._private.authentication.authentication_token_setup"
_RAY_TOKEN_NOTICE = "Token authentication is enabled for this Ray cluster"


def enabled() -> bool:
    """Progress lines on: ``PLACEMENT_PROGRESS`` if set (``0``: off), else whether stderr is a terminal."""
    setting = os.environ.get(ENV, "").strip()
    if setting:
        return setting != "0"
    try:
        return sys.stderr.isatty()
    except (AttributeError, ValueError):  # closed or replaced stderr
        return False


def say(what: str) -> None:
    """One progress line, ``placement: <what>``, when progress is on."""
    if enabled():
        print(f"placement: {what}", file=sys.stderr, flush=True)


@contextmanager
def step(what: str) -> Iterator[None]:
    """Say ``placement: <what>...`` as the step starts; when it took over 2 s, ``<what>: N.N s`` after."""
    say(f"{what}...")
    start = time.perf_counter()
    yield
    seconds = time.perf_counter() - start
    if seconds > 2.0:
        say(f"{what}: {seconds:.1f} s")


class _DropMessage(logging.Filter):
    def __init__(self, prefix: str) -> None:
        super().__init__()
        self.prefix = prefix

    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith(self.prefix)


def quiet_ray_token_notice() -> None:
    """Drop Ray's notice that a local cluster turned token authentication on (once per process)."""
    logger = logging.getLogger(_RAY_TOKEN_LOGGER)
    if not any(isinstance(f, _DropMessage) for f in logger.filters):
        logger.addFilter(_DropMessage(_RAY_TOKEN_NOTICE))
