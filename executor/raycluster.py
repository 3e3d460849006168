"""Joining or starting Ray, in bounded time: the one place the executor and the what-if sweep do it.

``ray.init(address=...)`` retries a cluster that does not answer for minutes (the GCS connection
retries), so an ``--address`` pointing at nothing looked like a hang. Here the address is first probed
with a plain TCP connection under :data:`CONNECT_TIMEOUT_S`; one that does not answer is refused in one
line naming it, before Ray is touched. A ``RAY_ADDRESS`` in the environment is used as ``--address``
would be (Ray itself would join it anyway, and then refuse the local-start options with "num_cpus and
num_gpus must not be provided"). ``ray.init`` itself then runs under a watchdog: if it has not returned
within :data:`INIT_TIMEOUT_S` (:data:`LOCAL_INIT_TIMEOUT_S` for a local start) the process gets one
line naming what did not answer.

Addresses: ``host:port`` (the GCS port of ``ray start --head``, 6379 by default), ``ray://host:port``
(Ray Client, 10001 by default), or ``auto`` / ``local`` (a cluster started on this host, found by Ray
through its own files; probed by Ray only).
"""

from __future__ import annotations

import contextlib
import os
import socket
import threading
from collections.abc import Iterator
from typing import Any

from moe_placement import progress
from moe_placement.errors import PlacementError

CONNECT_TIMEOUT_S = 5.0  # a TCP connect to the cluster's address
INIT_TIMEOUT_S = 60.0  # ray.init joining a cluster that answered the probe
LOCAL_INIT_TIMEOUT_S = 300.0  # starting a local Ray: slow on a loaded small host, but never forever
_DEFAULT_PORTS = {"ray": 10001, "": 6379}


def cluster_address(address: str | None) -> str | None:
    """The cluster to join: ``address`` if given, else ``RAY_ADDRESS`` from the environment, else None
    (start a local Ray)."""
    if address:
        return address
    env = os.environ.get("RAY_ADDRESS", "").strip()
    return env or None


def _host_port(address: str) -> tuple[str, int] | None:
    """``(host, port)`` of a ``host:port`` or ``ray://host:port`` address; None for ``auto``/``local``."""
    scheme, sep, rest = address.partition("://")
    if not sep:
        scheme, rest = "", address
    if rest in ("auto", "local", ""):
        return None
    host, colon, port_text = rest.rpartition(":")
    if not colon:
        host, port_text = rest, str(_DEFAULT_PORTS.get(scheme, 6379))
    host = host.strip("[]")  # [::1]:6379
    try:
        port = int(port_text)
    except ValueError:
        raise PlacementError(
            f"Ray address {address!r}: port {port_text!r} is not a number"
        ) from None
    if not 0 < port < 65536:
        raise PlacementError(f"Ray address {address!r}: port {port} is out of range")
    return host, port


def probe(address: str, timeout_s: float = CONNECT_TIMEOUT_S) -> None:
    """Raise :class:`PlacementError` unless a TCP connection to ``address`` succeeds within ``timeout_s``."""
    target = _host_port(address)
    if target is None:
        return
    host, port = target
    try:
        with socket.create_connection((host, port), timeout=timeout_s):
            pass
    except TimeoutError:
        raise PlacementError(
            f"no Ray cluster answers at {address}: the connection timed out after {timeout_s:g} s"
        ) from None
    except OSError as exc:
        cause = exc.strerror or type(exc).__name__
        raise PlacementError(
            f"no Ray cluster answers at {address}: {cause} (is `ray start --head` running there?)"
        ) from None


@contextlib.contextmanager
def _watchdog(what: str, timeout_s: float) -> Iterator[None]:
    """End the process with one line and exit 2 if the block has not finished within ``timeout_s``.
    ``ray.init`` blocks in C++ and cannot be interrupted from Python, so a timer thread writes the line
    and exits; the block finishing in time cancels it."""

    def expire() -> None:
        import sys

        sys.stderr.write(f"placement: error: {what} did not answer within {timeout_s:g} s\n")
        sys.stderr.flush()
        os._exit(2)

    timer = threading.Timer(timeout_s, expire)
    timer.daemon = True
    timer.start()
    try:
        yield
    finally:
        timer.cancel()


def init_ray(
    address: str | None,
    *,
    num_cpus: int | None,
    init_timeout_s: float | None = None,
    **kwargs: Any,
) -> bool:
    """Join the cluster at ``address`` (or ``RAY_ADDRESS``), or start a local Ray with ``num_cpus``.

    Returns True when this call started or joined Ray (the caller shuts it down), False when Ray was
    already initialised in this process. Every failure is one :class:`PlacementError` line."""
    import ray

    if ray.is_initialized():
        return False
    target = cluster_address(address)
    options: dict[str, Any]  # ray.init's keywords: an address, or the local Ray's CPU count
    if target is not None:
        probe(target)
        what, options = f"the Ray cluster at {target}", {"address": target}
    else:
        if num_cpus is not None and num_cpus < 1:
            raise PlacementError(f"--num-cpus must be >= 1, got {num_cpus}")
        what, options = "a local Ray", {"num_cpus": num_cpus}
        # a RAY_ADDRESS set to "" would still steer ray.init to look for a cluster
        os.environ.pop("RAY_ADDRESS", None)
    progress.quiet_ray_token_notice()  # a local ray.init logs it on every run
    if init_timeout_s is None:
        init_timeout_s = INIT_TIMEOUT_S if target is not None else LOCAL_INIT_TIMEOUT_S
    try:
        with (
            progress.step(f"{'joining' if target else 'starting'} {what}"),
            _watchdog(f"starting or joining {what}", init_timeout_s),
        ):
            ray.init(**options, **kwargs)
    except (ConnectionError, RuntimeError, ValueError, TimeoutError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise PlacementError(f"cannot start or reach {what}: {first}") from None
    return True
