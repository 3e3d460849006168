"""A group of executor workers as hand-rolled Ray actors forming one torch.distributed group.

Ray stays here, at the edge. The group starts a local Ray (or joins ``address``), places one actor per
rank (one GPU each for NCCL, one CPU slot each for gloo), elects rank 0's host and a free port as the
rendezvous, and forms the process group. Every remote call goes through :meth:`WorkerGroup.call`, which
never waits past a deadline and turns a dead, hung or out-of-memory worker into one
:class:`~moe_placement.errors.PlacementError` line naming the rank.
"""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Sequence
from typing import Any

from moe_placement import progress
from moe_placement.errors import PlacementError
from moe_placement.executor.raycluster import init_ray
from moe_placement.executor.worker import OOM_TAG, ExecutorWorker

BACKENDS = ("gloo", "nccl")
# After the first failure, how long to wait for the other ranks to report theirs (they see the broken
# group quickly) before naming the culprit.
GRACE_S = 5.0


def _first_line(exc: BaseException) -> str:
    """The most specific line of a (possibly Ray-wrapped) worker exception."""
    cause = getattr(exc, "cause", None)
    text = str(cause if cause is not None else exc)
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    for ln in reversed(lines):
        if OOM_TAG in ln:
            return ln[ln.index(OOM_TAG) :]
    return lines[-1] if lines else type(exc).__name__


class WorkerGroup:
    """``world`` workers; use as a context manager so actors (and a Ray it started) always go away."""

    def __init__(
        self,
        world: int,
        *,
        backend: str = "gloo",
        address: str | None = None,
        timeout_s: float = 120.0,
        threads: int | None = None,
    ) -> None:
        if world < 1:
            raise PlacementError("--workers must be >= 1")
        if backend not in BACKENDS:
            raise PlacementError(f"unknown backend {backend!r}; known: {', '.join(BACKENDS)}")
        if timeout_s <= 0:
            raise PlacementError("--timeout must be > 0")
        self.world = world
        self.backend = backend
        self.address = address
        self.timeout_s = timeout_s
        self.threads = threads
        self.actors: list[Any] = []
        self.info: list[dict[str, Any]] = []
        self._started_ray = False

    # ---- life cycle --------------------------------------------------------------------------------

    def __enter__(self) -> WorkerGroup:
        try:
            self.start()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _init_ray(self) -> None:
        # --address, else RAY_ADDRESS, else a local Ray; an address that does not answer is refused
        # within seconds, naming it (moe_placement.executor.raycluster). A CPU rank is a process, not a
        # core: a local Ray allows more ranks than cores on a small host.
        self._started_ray = init_ray(
            self.address,
            num_cpus=max(self.world, os.cpu_count() or 1),
            include_dashboard=False,
            log_to_driver=False,
            configure_logging=False,
        )

    def start(self) -> None:
        import ray

        self._init_ray()
        resources = ray.cluster_resources()
        need, key = (self.world, "GPU") if self.backend == "nccl" else (self.world, "CPU")
        have = int(resources.get(key, 0))
        if have < need:
            raise PlacementError(
                f"{self.world} workers with backend {self.backend} need {need} {key}s but the Ray cluster "
                f"has {have}"
                + ("; use --backend gloo on a host without GPUs" if key == "GPU" else "")
            )
        host_cpus = os.cpu_count() or 1
        threads = self.threads or max(1, host_cpus // self.world)
        options: dict[str, Any] = {"num_cpus": 1, "max_restarts": 0, "max_concurrency": 2}
        if self.backend == "nccl":
            options["num_gpus"] = 1
        remote_cls = ray.remote(ExecutorWorker)
        self.actors = [
            remote_cls.options(**options).remote(rank, self.world, threads)  # type: ignore[attr-defined]
            for rank in range(self.world)
        ]
        # each worker process imports torch and joins the process group: seconds, more on a busy host
        with progress.step(f"starting {self.world} workers ({self.backend})"):
            rendezvous = self.call("rendezvous", what="starting workers")
            master, port, _ = rendezvous[0]
            self.pids = [int(r[2]) for r in rendezvous]
            self.info = self.call(
                "setup",
                master,
                port,
                self.backend,
                self.timeout_s,
                what="forming the process group",
            )

    def close(self) -> None:
        import ray

        for actor in self.actors:
            with contextlib.suppress(Exception):  # already gone: nothing to clean
                ray.kill(actor, no_restart=True)
        self.actors = []
        if self._started_ray and ray.is_initialized():
            ray.shutdown()
            self._started_ray = False

    def _heartbeat(self) -> int:
        """Total layers replayed over the ranks that still answer."""
        import ray

        refs = [actor.progress.remote() for actor in self.actors]
        total = 0
        for ref in refs:
            try:
                total += int(ray.get(ref, timeout=1.0))
            except Exception:  # a dead or busy rank adds nothing; call() names it
                continue
        return total

    # ---- calls -------------------------------------------------------------------------------------

    def call(
        self,
        method: str,
        *args: Any,
        what: str = "",
        per_rank: Sequence[Sequence[Any]] | None = None,
        watch: bool = False,
        **kwargs: Any,
    ) -> list[Any]:
        """Call ``method`` on every rank (``per_rank[r]`` extra leading arguments for rank r); return the
        results in rank order, or raise one PlacementError line naming the rank that failed.

        The call is abandoned when no rank answers for the group's timeout (plus a grace period, so the
        ranks' own collective timeouts fire first and point at the culprit); with ``watch`` the clock
        restarts whenever a rank reports progress, so long replays are not cut short."""
        import ray
        from ray.exceptions import GetTimeoutError, RayActorError, RayTaskError

        refs = []
        for rank, actor in enumerate(self.actors):
            extra = tuple(per_rank[rank]) if per_rank is not None else ()
            refs.append(getattr(actor, method).remote(*extra, *args, **kwargs))
        rank_of = {ref: rank for rank, ref in enumerate(refs)}
        results: dict[int, Any] = {}
        died: dict[int, str] = {}
        oom: dict[int, str] = {}
        errors: dict[int, str] = {}
        limit = self.timeout_s
        deadline = time.monotonic() + limit + 2 * GRACE_S
        pending = list(refs)
        heartbeat = -1
        while pending:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                break
            done, pending = ray.wait(pending, num_returns=1, timeout=min(remaining, 1.0))
            if watch and not (died or oom or errors):
                beat = self._heartbeat()
                if beat > heartbeat:
                    heartbeat = beat
                    deadline = time.monotonic() + limit + 2 * GRACE_S
            for ref in done:
                rank = rank_of[ref]
                try:
                    results[rank] = ray.get(ref, timeout=1.0)
                except RayActorError as exc:
                    died[rank] = str(exc).splitlines()[0] if str(exc) else "actor died"
                except RayTaskError as exc:
                    line = _first_line(exc)
                    (oom if OOM_TAG in line else errors)[rank] = line
                except GetTimeoutError:
                    pending.append(ref)
            if died or oom or errors:
                deadline = min(deadline, time.monotonic() + GRACE_S)
        stage = f" while {what}" if what else ""
        if died:
            rank = min(died)
            pid = f" (pid {self.pids[rank]})" if getattr(self, "pids", None) else ""
            raise PlacementError(f"worker rank {rank}{pid} died{stage}; the run was aborted")
        if oom:
            rank = min(oom)
            raise PlacementError(f"worker rank {rank} ran out of memory{stage}: {oom[rank]}")
        hung = sorted(rank_of[ref] for ref in pending)
        if hung and not errors:
            ranks = ", ".join(str(r) for r in hung)
            raise PlacementError(
                f"worker rank(s) {ranks} did not answer within {limit:.0f} s{stage} (hung?); the run was aborted"
            )
        if hung:
            # Some ranks failed and others are stuck waiting on them in a collective: name the stuck one
            # when it is the cause (the failing ones only lost their peer), else the first failure.
            lost_peer = all(
                (
                    "connection" in e.lower()
                    or "timeout" in e.lower()
                    or "timed out" in e.lower()
                    or "peer" in e.lower()
                )
                for e in errors.values()
            )
            if lost_peer:
                ranks = ", ".join(str(r) for r in hung)
                raise PlacementError(
                    f"worker rank(s) {ranks} hung{stage} (their peers timed out waiting); the run was aborted"
                )
        if errors:
            rank = min(errors)
            raise PlacementError(f"worker rank {rank} failed{stage}: {errors[rank]}")
        return [results[r] for r in range(len(refs))]
