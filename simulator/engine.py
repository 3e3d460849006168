"""Flow-level (fluid) network engine on SimPy with exact max-min fair bandwidth sharing.

A flow is ``bytes_`` moving over a path: a list of directed links, each with a coefficient (1 for a plain
hop, ``1/n`` when the flow is sprayed evenly over ``n`` equal paths). Between events every active flow has
a constant rate; rates are the max-min fair allocation (progressive filling) and are recomputed when flows
arrive or finish. A flow's ``sent`` event fires when its last byte has left (the fluid finish), its ``done``
event one path latency later (delivery).

Why this is fast enough for real sizes (DOMAIN.md section 4):

* flows are solved as *classes*: flows whose solver links coincide get the same max-min rate, so one
  class stands for all of them (coefficients times its member count; a member finishing lowers the count
  and is still an exact event). Links with clear slack leave the solver (*lazy* links, their load still
  tracked); a lazy link that would be overloaded rejoins it with a full recomputation. Once NVLink has
  slack, the eight flows of a PXN node pair on one rail are one class behind their NIC pair;
* the progressive filling runs in compiled code (:mod:`moe_placement.simulator.kernels`, numba, cached on
  disk) with a heap of link levels, on one bundle of arrays (:class:`~moe_placement.simulator.kernels.NetArrays`);
* after completions only the classes bounded by the saturated links they left are refilled, then the
  max-min condition is checked around every class that moved, widening the refill until it holds;
* class state is updated lazily: progress is brought up to date only when a rate changes, and the next
  completion comes from a per-class finish time scan in compiled code;
* simultaneous arrivals (same simulated time) and completions within a tiny tolerance are batched into
  one recomputation.

Deterministic: no randomness, ties broken by flow id and link id.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import simpy

from moe_placement.errors import PlacementError
from moe_placement.simulator import kernels
from moe_placement.simulator.kernels import LAZY_BELOW, NetArrays

# Relative tolerance under which two finish times count as simultaneous (batched into one event).
FINISH_TOL = 1e-9

# Per-flow arrays of the bundle (grown with the flow count) and per-class ones, with their dtypes.
_FLOW_FIELDS: tuple[tuple[str, type], ...] = (("target", np.float64), ("cls", np.int64))
_CLASS_FIELDS: tuple[tuple[str, type], ...] = (
    ("is_active", np.bool_),
    ("bottleneck", np.int64),
    ("rate", np.float64),
    ("old_rate", np.float64),
    ("lazy_rate", np.float64),
    ("changed", np.int8),
    ("prog", np.float64),
    ("t_upd", np.float64),
    ("next_target", np.float64),
    ("finish", np.float64),
    ("c_head", np.int64),
    ("c_end", np.int64),
)
_NO_LINKS = np.zeros(0, dtype=np.int64)
# Flow records kept for the caller (not read by the kernels).
_RECORD_FIELDS = ("size_bytes", "latency_us", "start_us", "end_us")


def _grown(arr: np.ndarray, size: int) -> np.ndarray:
    """``arr`` zero-padded to ``size`` entries."""
    new = np.zeros(size, dtype=arr.dtype)
    new[: arr.size] = arr
    return new


def _grown_ptr(ptr: np.ndarray, old: int, size: int) -> np.ndarray:
    """A CSR pointer of ``old`` rows extended to ``size`` empty rows."""
    out = np.full(size + 1, ptr[old], dtype=np.int64)
    out[: old + 1] = ptr[: old + 1]
    return out


def _ensure(arr: np.ndarray, size: int) -> np.ndarray:
    """``arr``, or a copy at least doubled when it holds fewer than ``size`` entries."""
    if size <= arr.size:
        return arr
    return np.concatenate([arr, np.zeros(max(size, arr.size), dtype=arr.dtype)])


class FluidNetwork:
    """Links of fixed capacity (bytes per us) shared max-min fairly by flows, driven by a SimPy process.

    Call :meth:`transfer` from SimPy processes; it returns ``(sent, done)`` events. The network keeps
    per-link byte counters (``link_bytes``), per-flow records (``start_us``, ``end_us``, ``size_bytes``,
    ``latency_us``, :meth:`path`), the number of rate recomputations (``recomputes``) and the highest
    link utilisation any allocation reached (``worst_utilisation``, must stay <= 1).

    Flows are solved as *classes*: flows whose solver links (and coefficients) coincide get the same
    max-min rate, so the solver sees one entity per class, with coefficients times its member count; a
    member finishing lowers the count. With ``aggregate`` the network also takes links that are not
    saturated out of the solver (*lazy* links; their load is still tracked and a lazy link that would be
    overloaded joins the solver again, with a full recomputation), which makes more flows share a class
    - e.g. the eight PXN flows of a node pair behind one NIC pair once NVLink is no longer the bottleneck.
    Both keep the allocation the exact max-min one: a feasible allocation in which every flow has a
    bottleneck among the solver links is *the* max-min fair allocation of the whole network.

    The kernels' arrays live in one bundle, ``s`` (:class:`~moe_placement.simulator.kernels.NetArrays`),
    replaced by :meth:`_store` whenever an array grows.
    """

    s: NetArrays
    size_bytes: np.ndarray
    latency_us: np.ndarray
    start_us: np.ndarray
    end_us: np.ndarray

    def __init__(
        self,
        env: simpy.Environment,
        capacity_bytes_per_us: Sequence[float] | np.ndarray,
        *,
        max_flows: int = 1024,
        binding: Sequence[bool] | np.ndarray | None = None,
        incremental: bool = True,
        aggregate: bool = True,
    ) -> None:
        self.env = env
        kernels.announce_compile(
            kernels.solve,
            kernels.advance,
            kernels.pop_finished,
            kernels.classify,
            kernels.build_classes,
            kernels.link_index,
        )
        cap = np.asarray(capacity_bytes_per_us, dtype=np.float64)
        if cap.size == 0 or (cap <= 0).any():
            raise PlacementError("a network needs links, each with a capacity > 0")
        # Links that can never saturate (their load is bounded by other links' capacity) are left out of
        # the rate computation - exactly, since they never freeze a flow - but still count bytes.
        self.binding = (
            np.ones(cap.size, dtype=bool) if binding is None else np.asarray(binding, dtype=bool)
        )
        # incremental: local refill checked against the max-min condition; otherwise refill every class
        # at or above the finished flows' level (both exact; the second is the reference in tests)
        self.incremental = incremental
        self.aggregate = aggregate
        self.num_links = int(cap.shape[0])
        self._fsize = max(16, max_flows)
        self._csize = max(16, max_flows)
        self.s = self._new_bundle(cap)
        self._scr = kernels.scratch(self._csize, cap.size)  # the filling's scratch (all zero)
        self._arrays = kernels.pack_net(tuple(self.s))
        for name in _RECORD_FIELDS:
            setattr(self, name, np.zeros(self._fsize))
        self._strikes = np.zeros(self.num_links, dtype=np.int64)  # times a lazy link overloaded
        self._barred_until = np.zeros(self.num_links, dtype=np.int64)  # no lazy before this regroup
        self.link_bytes = np.zeros(self.num_links)
        self._paths: list[tuple[np.ndarray, np.ndarray]] = []
        self._path_cache: dict[
            int, tuple[Any, Any, np.ndarray, np.ndarray, np.ndarray, np.ndarray]
        ] = {}
        self.num_flows = 0
        self.num_classes = 0
        self._cm_used = 0
        self.act = np.zeros(0, dtype=np.int64)  # active class ids, in creation order
        self._pending: list[int] = []
        self._wakeup: simpy.Event | None = None
        self._callbacks: list[tuple[simpy.Event, simpy.Event, float]] = []
        self.recomputes = 0
        self.refilled = 0  # classes whose rate was recomputed, summed over recomputes
        self.rounds = 0  # refill-and-check rounds of the incremental solver
        self.events = 0
        self._active_count = 0  # flows in flight
        self.regroups = 0  # full regroupings of the active flows into classes
        self._since_regroup = 0
        self._new_since_regroup = 0
        # regroup cadence: at least this many events apart, and at least active flows / this many
        self.regroup_min_events = 64
        self.regroup_flows_per_event = 32
        self._index_stale = True
        self._index_size = 0
        self.worst_utilisation = 0.0
        self._next_finish = np.inf  # the earliest finish time of the active classes
        env.process(self._run())

    # -- storage ------------------------------------------------------------------------------------
    def _new_bundle(self, cap: np.ndarray) -> NetArrays:
        links, flows, classes = cap.size, self._fsize, self._csize
        fields: dict[str, np.ndarray] = {
            "cap": cap,
            "used": np.zeros(links),
            "lazy": np.zeros(links, dtype=np.bool_),
            "lazy_used": np.zeros(links),
            "fl_ptr": np.zeros(flows + 1, dtype=np.int64),
            "fl_link": np.zeros(8 * flows, dtype=np.int64),
            "fl_coef": np.zeros(8 * flows),
            "cl_ptr": np.zeros(classes + 1, dtype=np.int64),
            "cl_link": np.zeros(4 * classes, dtype=np.int64),
            "cl_unit": np.zeros(4 * classes),
            "cl_coef": np.zeros(4 * classes),
            "cz_ptr": np.zeros(classes + 1, dtype=np.int64),
            "cz_link": np.zeros(4 * classes, dtype=np.int64),
            "cz_coef": np.zeros(4 * classes),
            "cm_flow": np.zeros(flows, dtype=np.int64),
            "lk_ptr": np.zeros(links + 1, dtype=np.int64),
            "lk_flow": np.zeros(0, dtype=np.int64),
        }
        for name, dtype in _FLOW_FIELDS:
            fields[name] = np.zeros(flows, dtype=dtype)
        for name, dtype in _CLASS_FIELDS:
            fields[name] = np.zeros(classes, dtype=dtype)
        return NetArrays(**fields)

    def _store(self, **fields: np.ndarray) -> None:
        """Replace arrays of the bundle (and the structref the kernels take: a new one)."""
        self.s = self.s._replace(**fields)
        self._arrays = kernels.pack_net(tuple(self.s))

    @property
    def cap(self) -> np.ndarray:
        """``[links]`` capacity, bytes per us."""
        return self.s.cap

    @property
    def lazy(self) -> np.ndarray:
        """``[links]`` whether the link is out of the solver now (unsaturated)."""
        return self.s.lazy

    def path(self, flow: int) -> tuple[np.ndarray, np.ndarray]:
        """Flow ``flow``'s links (binding or not) and coefficients."""
        return self._paths[flow]

    def _grow_flows(self, size: int) -> None:
        old, self._fsize = self._fsize, size
        for name in _RECORD_FIELDS:
            setattr(self, name, _grown(getattr(self, name), size))
        grown = {name: _grown(getattr(self.s, name), size) for name, _ in _FLOW_FIELDS}
        self._store(fl_ptr=_grown_ptr(self.s.fl_ptr, old, size), **grown)

    def _grow_classes(self, size: int) -> None:
        old, self._csize = self._csize, size
        grown = {name: _grown(getattr(self.s, name), size) for name, _ in _CLASS_FIELDS}
        for name in ("cl_ptr", "cz_ptr"):
            grown[name] = _grown_ptr(getattr(self.s, name), old, size)
        self._store(**grown)
        self._scr = kernels.scratch(size, self.num_links)  # zero between calls: fresh is the same

    def _ensure(self, **sizes: int) -> None:
        """Room for at least ``sizes[name]`` entries in each named CSR array of the bundle."""
        grown = {}
        for name, size in sizes.items():
            arr = getattr(self.s, name)
            new = _ensure(arr, size)
            if new is not arr:
                grown[name] = new
        if grown:
            self._store(**grown)

    def _new_classes(self, flows: np.ndarray, groups: np.ndarray, now: float) -> np.ndarray:
        """Form one class per group of ``flows`` (``groups[i]``: 0, 1, ...); returns the class ids."""
        s = self.s
        order = np.lexsort((flows, s.target[flows], groups))  # members by finish target, then id
        members = flows[order]
        bounds = np.concatenate(
            [[0], np.flatnonzero(np.diff(groups[order])) + 1, [members.size]]
        ).astype(np.int64)
        count = bounds.size - 1
        first = self.num_classes
        while first + count >= self._csize:
            self._grow_classes(2 * self._csize)
        s = self.s
        # room for the solver links (at most the members' own) and the member list
        heads = members[bounds[:-1]]
        need = s.cl_ptr[first] + int((s.fl_ptr[heads + 1] - s.fl_ptr[heads]).sum())
        zneed = s.cz_ptr[first] + int((s.fl_ptr[members + 1] - s.fl_ptr[members]).sum())
        self._ensure(
            cl_link=need,
            cl_unit=need,
            cl_coef=need,
            cm_flow=self._cm_used + members.size,
            cz_link=zneed,
            cz_coef=zneed,
        )
        kernels.build_classes(self._arrays, first, members, bounds, self._cm_used)
        self._cm_used += members.size
        self.num_classes += count
        ids = np.arange(first, first + count, dtype=np.int64)
        s = self.s
        s.is_active[ids] = True
        s.rate[ids] = 0.0 if self.incremental else np.inf  # filled by the next recompute
        s.old_rate[ids] = 0.0
        s.lazy_rate[ids] = 0.0
        s.changed[ids] = 1
        s.prog[ids] = 0.0
        s.t_upd[ids] = now
        s.bottleneck[ids] = 0
        return ids

    def _classes_for(self, flows: np.ndarray) -> np.ndarray:
        """Class index of each flow: identical solver paths share one when aggregating."""
        return kernels.classify(self._arrays, flows, False, self.aggregate)[1]

    # -- flows --------------------------------------------------------------------------------------
    def _solver_path(
        self, links: Sequence[int] | np.ndarray, coefs: Sequence[float] | np.ndarray | None
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """(all links, their coefficients, binding links, their coefficients) of a path; routes are
        reused arrays, so a path given as an array is remembered by identity."""
        key = id(links)
        hit = self._path_cache.get(key)
        if hit is not None and hit[0] is links and hit[1] is coefs:
            return hit[2], hit[3], hit[4], hit[5]
        full_links = np.asarray(links, dtype=np.int64)
        if full_links.size and (full_links.min() < 0 or full_links.max() >= self.num_links):
            raise PlacementError(f"flow uses a link outside 0..{self.num_links - 1}")
        full_coefs = (
            np.ones(full_links.size) if coefs is None else np.asarray(coefs, dtype=np.float64)
        )
        keep = self.binding[full_links]
        if not keep.any():
            keep[:] = True  # an unconstrained flow still needs a rate limit
        link_arr, coef_arr = full_links[keep], full_coefs[keep]
        if isinstance(links, np.ndarray):
            self._path_cache[key] = (links, coefs, full_links, full_coefs, link_arr, coef_arr)
        return full_links, full_coefs, link_arr, coef_arr

    def transfer(
        self,
        links: Sequence[int] | np.ndarray,
        bytes_: float,
        *,
        coefs: Sequence[float] | np.ndarray | None = None,
        latency_us: float = 0.0,
    ) -> tuple[simpy.Event, simpy.Event]:
        """Start a flow of ``bytes_`` over ``links`` now; returns ``(sent, done)`` events (value: flow id,
        -1 for a copy that never enters the network)."""
        sent, done = self.env.event(), self.env.event()
        full_links, full_coefs, link_arr, coef_arr = self._solver_path(links, coefs)
        if bytes_ <= 0 or full_links.size == 0:
            # Nothing to move over the network (a GPU-local copy): delivered after the latency alone.
            self.env.timeout(0).callbacks.append(_succeed_later(sent, -1))
            self.env.timeout(latency_us).callbacks.append(_succeed_later(done, -1))
            return sent, done
        fid = self.num_flows
        self._paths.append((full_links, full_coefs))
        if fid >= self._fsize:
            self._grow_flows(2 * self._fsize)
        start = self.s.fl_ptr[fid]
        end = start + link_arr.size
        if end > self.s.fl_link.size:
            self._ensure(fl_link=end, fl_coef=end)
        s = self.s
        s.fl_link[start:end] = link_arr
        s.fl_coef[start:end] = coef_arr
        s.fl_ptr[fid + 1] = end
        self.num_flows += 1
        self.size_bytes[fid] = bytes_
        self.latency_us[fid] = latency_us
        self.start_us[fid] = self.env.now
        self._callbacks.append((sent, done, latency_us))
        self._pending.append(fid)
        if self._wakeup is not None and not self._wakeup.triggered:
            self._wakeup.succeed()
        return sent, done

    # -- the event loop -----------------------------------------------------------------------------
    def _run(self) -> Any:
        env = self.env
        next_finish = np.inf
        while True:
            self._wakeup = env.event()
            if np.isfinite(next_finish):
                yield env.any_of([env.timeout(max(next_finish - env.now, 0.0)), self._wakeup])
            else:
                yield self._wakeup
            # let every process acting at this instant post its flows first: one recompute for all
            yield env.timeout(0)
            self._wakeup = None
            self.events += 1
            self._since_regroup += 1
            next_finish = self._next_finish = self._step(float(env.now))

    def _step(self, now: float) -> float:
        """One event: finish what is due, admit what arrived, re-solve the rates; returns the next
        finish time."""
        keep_below, seed_links, seed_cls = self._finish_due(now)
        if self._pending:
            arrived = self._admit(now)
            if arrived is None:  # a regrouping took the arrivals in and solved everything
                return self._settle(now)
            seed_cls.append(arrived)
            keep_below = -np.inf  # an arrival can lower rates at any level: refill all
        if keep_below < np.inf and self.act.size:
            next_finish = self._solve(
                now, keep_below, seed_cls, seed_links, self._regroup_verdict()
            )
            if next_finish is not None:
                return next_finish  # no lazy link overloaded, no regrouping due: already advanced
            if self.aggregate and self._lazy_overloaded():
                self._regroup(now)
        if self.aggregate and self._regroup_due():
            self._lazify()
            self._regroup(now)
        return self._settle(now)

    def _finish_due(self, now: float) -> tuple[float, np.ndarray, list[np.ndarray]]:
        """Complete the flows due by ``now``. Returns (the lowest rate that finished - classes below it
        keep theirs -, the saturated links they left, the classes that shrank)."""
        if self._next_finish > now + FINISH_TOL * max(now, 1.0):
            return np.inf, _NO_LINKS, []  # the earliest finish (as of the last advance) is later
        done_cls, done_ids, seed_links, empty, low = kernels.pop_finished(
            self._arrays, self.act, now, FINISH_TOL
        )
        if not done_cls.size:
            return np.inf, seed_links, []
        self._active_count -= done_ids.size
        s = self.s
        if empty.size:
            s.is_active[empty] = False
            self.act = self.act[s.is_active[self.act]]
        # classes that lost members but go on: their coefficients changed, refill them
        shrunk = done_cls[s.is_active[done_cls]]
        self._complete(done_ids, now)
        return low, seed_links, [shrunk]

    def _admit(self, now: float) -> np.ndarray | None:
        """Put the flows that arrived into classes; returns the new class ids, or None when a new flow
        had only lazy links and the whole set was regrouped (and solved) instead."""
        new = np.asarray(self._pending, dtype=np.int64)
        self._pending.clear()
        self.s.target[new] = self.size_bytes[new]
        self._active_count += new.size
        # a new flow whose links are all lazy would have no rate limit: one rejoins the solver
        rescued, groups = kernels.classify(
            self._arrays, new, bool(self.s.lazy.any()), self.aggregate
        )
        if rescued:
            self._regroup(now, extra=new)
            return None
        # arrivals form classes of their own (with each other when their paths coincide)
        ids = self._new_classes(new, groups, now)
        self.act = np.concatenate([self.act, ids])
        self._new_since_regroup += new.size
        self._index_stale = True
        return ids

    def _settle(self, now: float) -> float:
        return kernels.advance(self._arrays, self.act, now)

    def _solve(
        self,
        now: float,
        keep_below: float,
        seed_cls: list[np.ndarray],
        seed_links: np.ndarray,
        verdict: int = kernels.KEEP_OPEN,
    ) -> float | None:
        """New rates after the event; the next finish time when the kernel could also advance (see
        :func:`~moe_placement.simulator.kernels.solve`), else None."""
        # classes just under the finished flow's level are refilled too (float ties)
        threshold = keep_below * (1.0 - 1e-12) if np.isfinite(keep_below) else keep_below
        if self._index_stale or self.act.size * 2 < self._index_size:
            # rebuilt on arrivals (or when mostly stale); finished classes in it are skipped
            lk_ptr, lk_flow = kernels.link_index(
                self.act, self.s.cl_ptr, self.s.cl_link, self.num_links
            )
            self._store(lk_ptr=lk_ptr, lk_flow=lk_flow)
            self._index_stale = False
            self._index_size = self.act.size
        if self.incremental:
            seeds = np.concatenate(seed_cls) if seed_cls else _NO_LINKS
            solved = kernels.solve(
                self._arrays,
                self.act,
                seeds,
                seed_links,
                threshold,
                self.aggregate,
                now,
                verdict,
                self._scr,
            )
        else:
            solved = kernels.solve_full(
                self._arrays, self.act, threshold, self.aggregate, now, verdict, self._scr
            )
        refilled, rounds, worst, lazy_worst, next_finish = solved
        if self.incremental:
            self.rounds += rounds
        self.refilled += refilled
        self.recomputes += 1
        self.worst_utilisation = max(self.worst_utilisation, worst, lazy_worst)
        return None if np.isnan(next_finish) else next_finish

    # -- lazy links and regrouping ------------------------------------------------------------------
    def _lazy_overloaded(self) -> bool:
        """A lazy link over its capacity rejoins the solver (the caller then regroups and re-solves).
        The allocation is not kept: no time passes before the re-solve."""
        s = self.s
        if not s.lazy.any():
            return False
        over = s.lazy & (s.lazy_used > s.cap * (1.0 + 1e-9))
        if not over.any():
            worst = float((s.lazy_used[s.lazy] / s.cap[s.lazy]).max())
            self.worst_utilisation = max(self.worst_utilisation, worst)
            return False
        s.lazy[over] = False
        # back off: a link that came back stays in the solver for 2, 4, 8, ... regroupings
        self._strikes[over] += 1
        self._barred_until[over] = self.regroups + 2 ** np.minimum(self._strikes[over], 20)
        return True

    def _regroup_verdict(self) -> int:
        """Whether a regrouping is due, as far as the counters tell (see :meth:`_regroup_due`)."""
        if (
            not self.aggregate
            or self._since_regroup < self.regroup_min_events
            or self._since_regroup * self.regroup_flows_per_event < self._active_count
            or not self.act.size
        ):
            return kernels.NO_REGROUP
        if self._new_since_regroup * 4 > self.act.size:
            return kernels.REGROUP
        return kernels.REGROUP_IF_SLACK

    def _regroup_due(self) -> bool:
        """Regroup when it pays (its cost ~ the flows in flight, so at most every ``in flight /
        regroup_flows_per_event`` events and ``regroup_min_events`` apart):
        solver links left with clear slack, or many arrivals in classes of their own."""
        verdict = self._regroup_verdict()
        if verdict != kernels.REGROUP_IF_SLACK:
            return verdict == kernels.REGROUP
        s = self.s
        slack = ~s.lazy & (s.used > 0.0) & (s.used < s.cap * LAZY_BELOW)
        return bool(slack.any())

    def _lazify(self) -> None:
        """Solver links with clear slack leave the solver; every flow keeps at least one solver link."""
        s = self.s
        s.lazy[:] |= (s.used < s.cap * LAZY_BELOW) & (self._barred_until <= self.regroups)
        kernels.classify(self._arrays, self._active_flows(), True, False)  # orphans only

    def _active_flows(self) -> np.ndarray:
        if not self.act.size:
            return np.zeros(0, dtype=np.int64)
        heads, ends = self.s.c_head[self.act], self.s.c_end[self.act]
        lens = ends - heads
        idx = np.repeat(heads - np.cumsum(lens) + lens, lens) + np.arange(lens.sum())
        return np.sort(self.s.cm_flow[idx])

    def _regroup(self, now: float, extra: np.ndarray | None = None) -> None:
        """Re-form all classes from the active flows (plus ``extra`` new ones) under the current lazy
        set, and solve from scratch."""
        self.regroups += 1
        self._since_regroup = 0
        self._new_since_regroup = 0
        s = self.s
        flows = self._active_flows()
        if flows.size:
            # bring members up to date: what is left of each is its target in a fresh class
            c = s.cls[flows]
            prog_now = s.prog[c] + s.old_rate[c] * (now - s.t_upd[c])
            s.target[flows] = np.maximum(s.target[flows] - prog_now, 0.0)
        if extra is not None and extra.size:
            flows = np.sort(np.concatenate([flows, extra]))
        # all classes are re-formed: their storage starts over
        s.is_active[: self.num_classes] = False
        self.num_classes = 0
        self._cm_used = 0
        self.act = np.zeros(0, dtype=np.int64)
        s.used[:] = 0.0
        s.lazy_used[:] = 0.0
        self._index_stale = True
        if not flows.size:
            return
        self.act = self._new_classes(flows, self._classes_for(flows), now)
        self._solve(now, -np.inf, [self.act], np.zeros(0, dtype=np.int64))
        if self._lazy_overloaded():  # the new rates overload a lazy link: it rejoins, solve again
            self._regroup(now)

    def _complete(self, done_ids: np.ndarray, now: float) -> None:
        for fid in done_ids.tolist():
            links, coefs = self._paths[fid]
            np.add.at(self.link_bytes, links, coefs * self.size_bytes[fid])
            self.end_us[fid] = now
            sent, done, lat = self._callbacks[fid]
            sent.succeed(fid)
            if lat > 0:
                self.env.timeout(lat).callbacks.append(_succeed_later(done, fid))
            else:
                done.succeed(fid)


def _succeed_later(event: simpy.Event, value: int) -> Callable[[simpy.Event], None]:
    def fire(_e: simpy.Event) -> None:
        event.succeed(value)

    return fire
