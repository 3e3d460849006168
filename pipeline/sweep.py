"""Run a list of scenarios: cached by scenario hash, in parallel on Ray when installed, serially otherwise.

Each finished scenario is written at once to ``cache/<key>.json`` (atomically), so an interrupted sweep
keeps what it computed and a re-run computes only scenarios whose key is not cached. Ray runs the very same
:func:`moe_placement.pipeline.engine.run_scenario` in its workers, so results are identical to a serial run (apart from
the wall-clock columns ``solve_s`` and ``wall_s``). Ray stays at this edge: solvers and the simulator
never import it.
"""

from __future__ import annotations

import importlib.util
import json
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tqdm import tqdm

from moe_placement.atomic import ensure_folder, os_cause, write_json
from moe_placement.cluster import ClusterSpec
from moe_placement.errors import PlacementError
from moe_placement.pipeline.engine import engine_id, run_scenario
from moe_placement.pipeline.scenario import Scenario


@dataclass
class SweepOutcome:
    """Records in scenario order, and how many were computed now versus read from the cache."""

    records: list[dict[str, Any]]
    computed: int
    cached: int
    backend: str


class FolderLock:
    """An exclusive lock on an output folder (``<folder>/.lock``, ``flock``), held until :meth:`release`
    or until the process ends (the kernel drops it even on SIGKILL, so a crashed run never leaves a
    stale lock). Two what-if runs on one ``--out`` would otherwise interleave their cache and results
    (seen: a mixed result set in 5 of 12 tries, both exiting 0)."""

    def __init__(self, folder: str | Path) -> None:
        import fcntl
        import os

        self._fd: int | None = None  # set first: __del__ runs even when ensure_folder raises
        folder = ensure_folder(folder)
        self.path = folder / ".lock"
        try:
            self._fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as exc:
            raise PlacementError(f"cannot lock {folder}: {os_cause(exc)}") from None
        try:
            fcntl.flock(self._fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            holder = os.pread(self._fd, 32, 0).decode(errors="replace").strip() or "another process"
            os.close(self._fd)
            self._fd = None
            raise PlacementError(
                f"{folder} is in use by another run (pid {holder}); wait for it or choose another --out"
            ) from None
        os.ftruncate(self._fd, 0)
        os.pwrite(self._fd, str(os.getpid()).encode(), 0)

    def release(self) -> None:
        import os

        if self._fd is not None:
            os.close(self._fd)  # closing drops the flock
            self._fd = None

    def __enter__(self) -> FolderLock:
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()

    def __del__(self) -> None:
        self.release()


def ray_available() -> bool:
    return importlib.util.find_spec("ray") is not None


def _read_cache(path: Path) -> dict[str, Any] | None:
    try:
        data = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return None  # a damaged cache entry is recomputed, never trusted
    return data if isinstance(data, dict) else None


def run_sweep(
    scenarios: Sequence[Scenario],
    base: ClusterSpec,
    cache_dir: str | Path,
    *,
    address: str | None = None,
    serial: bool = False,
    num_cpus: int = 2,
    progress: bool = True,
) -> SweepOutcome:
    """Results for ``scenarios`` (cached ones read back, the rest computed and cached)."""
    cache = Path(cache_dir)
    cache.mkdir(parents=True, exist_ok=True)
    engine = engine_id()
    keys = [s.key(base, engine) for s in scenarios]
    records: dict[str, dict[str, Any]] = {}
    todo: list[tuple[Scenario, str]] = []
    queued: set[str] = set()
    for scenario, key in zip(scenarios, keys, strict=True):
        hit = _read_cache(cache / f"{key}.json")
        if hit is not None and hit.get("key") == key:
            records[key] = hit
        elif key not in queued:
            queued.add(key)
            todo.append((scenario, key))
    cached = len(records)
    if num_cpus < 1:
        raise PlacementError(f"--num-cpus must be >= 1, got {num_cpus}")
    if not serial and ray_available():
        from moe_placement.executor.raycluster import cluster_address, probe

        target = cluster_address(address)
        if target is not None:
            probe(target)  # before any work: a cluster that does not answer is named in seconds
    use_ray = bool(todo) and not serial and (address is not None or ray_available())
    if address is not None and not ray_available():
        raise PlacementError("--address needs Ray, which is not installed")
    bar = tqdm(total=len(todo), desc="scenarios", unit="scn", disable=None if progress else True)
    try:
        if use_ray:
            _run_ray(todo, base, cache, records, bar, address=address, num_cpus=num_cpus)
        else:
            for scenario, key in todo:
                record = run_scenario(scenario, base)
                _store(cache, record)
                records[key] = record
                bar.update(1)
    finally:
        bar.close()
    backend = "ray" if use_ray else "serial"
    return SweepOutcome(
        [records[k] for k in keys], computed=len(todo), cached=cached, backend=backend
    )


def _store(cache: Path, record: dict[str, Any]) -> None:
    """Cache a record under the key of the code that computed it. If the source changed while the sweep
    ran (a worker saw other code than the driver), the record still lands under its true key and the
    next run, under the new code, recomputes what it must."""
    write_json(cache / f"{record['key']}.json", record)


def _run_remote(scenario: Scenario, base: ClusterSpec) -> dict[str, Any]:
    return run_scenario(scenario, base)


def _run_ray(
    todo: list[tuple[Scenario, str]],
    base: ClusterSpec,
    cache: Path,
    records: dict[str, dict[str, Any]],
    bar: Any,
    *,
    address: str | None,
    num_cpus: int,
) -> None:
    import ray

    from moe_placement.executor.raycluster import init_ray

    # --address, else RAY_ADDRESS, else a local Ray of num_cpus; an address that does not answer is
    # refused within seconds, naming it (moe_placement.executor.raycluster)
    started_here = init_ray(
        address,
        num_cpus=num_cpus,
        include_dashboard=False,
        logging_level=logging.WARNING,
        log_to_driver=False,
    )
    try:
        remote = ray.remote(num_cpus=1)(_run_remote)
        base_ref = ray.put(base)
        pending = {remote.remote(s, base_ref): k for s, k in todo}
        waiting = list(pending)
        while waiting:
            done, waiting = ray.wait(waiting, num_returns=1)
            for ref in done:
                try:
                    record = ray.get(ref)
                except ray.exceptions.RayTaskError as exc:
                    cause = getattr(exc, "cause", None)
                    if isinstance(cause, PlacementError):  # one line for the user, not a traceback
                        raise PlacementError(str(cause)) from None
                    raise
                _store(cache, record)
                records[pending[ref]] = record
                bar.update(1)
    finally:
        if started_here:
            ray.shutdown()
