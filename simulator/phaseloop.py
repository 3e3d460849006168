"""The event loop of all-to-all phases, compiled: the same events as the SimPy path, without Python.

:func:`moe_placement.simulator.collectives.run_phase` plays a phase as SimPy processes on a
:class:`~moe_placement.simulator.engine.FluidNetwork`: every flow start, finish and delivery passes through
SimPy's queue, a Python callback and the network's Python bookkeeping (~0.2-0.8 ms an event, most of a
64-GPU DeepEP run). A phase whose GPUs start at known times has nothing to wait for but its own flows, so
the whole of it - the phase driver (direct sends, pipelined or store-and-forward relays, deliveries) and
the fluid network's event handling around the compiled rate solver of :mod:`~moe_placement.simulator.kernels`
- runs here as one compiled loop over arrays.

It is the same model, step for step: flows start, finish and are delivered at the same instants, the
network batches simultaneous finishes with the same tolerance, classes, lazy links and regroupings follow
the same rules and the rates are the same max-min fair allocation (unique, so equal up to float rounding
in the order of summation: ``tests/test_simulator_phaseloop.py`` compares both paths flow by flow).
A call plays a pair of phases: the second chained to the first per GPU after a fixed delay (a MoE layer
without overlap: each GPU's combine leaves once its dispatch data has landed and its experts ran,
:mod:`moe_placement.simulator.moe_compiled`) or behind a barrier (:func:`play_phases`, what
``simulate_uniform`` runs). SimPy stays the engine of what shares a compute stream (the overlapped modes).
By default the loop never regroups (see :data:`REGROUP_CADENCE`): the same allocation, faster here.
Unlike FluidNetwork it does not scan every class in flight at an event: finish times live in a heap and
only the classes the refill moved are brought up to date (what an event costs at 512 GPUs and more).

State lives in arrays sized up front from the plans (flows are bounded by the plan: every relay send
carries at least one chunk's worth); classes, when they would outgrow their room between regroupings, are
regrouped early, and a run that still does not fit is played again with twice the room.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from tqdm import tqdm

from moe_placement.simulator import bundles, kernels
from moe_placement.simulator.bundles import Packed
from moe_placement.simulator.collectives import PhasePlan, _with_sm_link
from moe_placement.simulator.engine import FINISH_TOL
from moe_placement.simulator.kernels import (
    KEEP_OPEN,
    LAZY_BELOW,
    NO_REGROUP,
    REGROUP,
    REGROUP_IF_SLACK,
    NetArrays,
    _njit,
    _njit_inner,
    _view,
)
from moe_placement.simulator.topology import Route, Topology

# the phase driver's byte tolerance (collectives._TOL)
_TOL = 1e-9

# engine counters (``ei``, int64) and floats (``ef``)
(
    N_FLOWS,
    N_CLASSES,
    CM_USED,
    N_ACT,
    EVENTS,
    RECOMPUTES,
    REGROUPS,
    SINCE_REGROUP,
    NEW_SINCE_REGROUP,
    ACTIVE_COUNT,
    INDEX_SIZE,
    INDEX_STALE,
    N_PEND,
    REFILLED,
    STATUS,
    ACT_SUM,
    REGROUP_MIN_EVENTS,
    REGROUP_FLOWS_PER_EVENT,
    PHASE_STARTED,
    PHASE_DONE,
    ANY_LAZY,
    FIN_HEAP,
    N_DEAD,
    HEAP_STALE,
    REGROUP_REQ,
    REGROUP_NEW,
    STASHED,
    N_STASH,
    LAST_MOVED,
    WHOLE_REFILLS,
) = range(30)
_EI_SIZE = 30
# ``ef``: the loop's floats. FINISH_WINDOW: finishes due within this share of the simulated time
# (relative, as FluidNetwork's FINISH_TOL) end in one event: FINISH_TOL for the exact simulation, half
# of ``--finish-window`` W (the loop then wakes W/2 late, so finishes up to W/2 either side of the due
# one end together), which trades a stated error for fewer events. WINDOW_ORIGIN: where that
# time is counted from: 0 for the exact simulation; with a window, the start of the pair of phases
# playing (a layer's dispatch and combine), so a window is a share of the pair's time, not of every
# layer before it. (Counted from the combine's own start, the window gained a plan nothing measurable
# and cost the 1024-GPU run two fifths more events.)
WORST, NEXT_FINISH, NOW, T_NET, FINISH_WINDOW, WINDOW_ORIGIN = range(6)
_EF_SIZE = 6

# per-phase counters (``drv[20]``): its timed actions' heap size and sequence, its flow records, GPUs
# done so far that the chain has seen
P_HEAP, P_SEQ, P_INFO, P_SEEN, P_PHASE = range(5)
# how the second phase of a pair starts: each GPU once its own first phase is done plus ``delay[g]``
# (a MoE layer: the experts run between dispatch and combine), or every GPU once all are done
CHAIN_PER_GPU, CHAIN_BARRIER = 0, 1

# Flow kinds (what its sent and delivered callbacks do) and timed actions. numpy integers, not Python
# ints: numba types a Python int constant passed to a kernel as a literal and compiles that kernel once
# per value (seconds of a cold compile each).
K_DIRECT, K_STAGE1, K_STAGE2 = np.int64(0), np.int64(1), np.int64(2)
A_DELIVER, A_START, A_LOCAL_SENT = np.int64(0), np.int64(1), np.int64(2)
_KEEP_OPEN = np.int64(KEEP_OPEN)
# run status
OK, OUT_OF_CLASSES, OUT_OF_FLOWS = 0, 1, 2
# A regrouping play leaves to :func:`regroup_step` (``ei[REGROUP_REQ]``), so that play's compile does
# not hold the regrouping's code: the arrivals did not fit their room (``ei[REGROUP_NEW]`` of them wait
# in the pending list), a lazy link overloaded, or a regrouping is due.
# (numpy integers: ``code`` in regroup_step is reassigned, and a literal would not unify with int64)
R_NONE, R_ADMIT, R_OVERLOAD, R_DUE = np.int64(0), np.int64(1), np.int64(2), np.int64(3)
# regroup_step's cold compile in seconds, once kernels.refill and play's callees are cached
REGROUP_COMPILE_S = 4

# The regrouping cadence (FluidNetwork's regroup_min_events, regroup_flows_per_event). Performance
# only: any cadence gives the same allocation. FluidNetwork regroups to aggregate classes behind lazy
# links because its Python cost is per class; here a regrouping costs more than it saves (64 GPUs DeepEP:
# 0.34 s without, 0.68 s at FluidNetwork's 64/32; 256 GPUs: 9 s against 16 s), so by default the loop
# never regroups (no link goes lazy) unless classes outgrow their room. [64, 32] replays FluidNetwork's
# events exactly (tests).
NEVER = 1 << 62
REGROUP_CADENCE = [NEVER, 1]

# The link -> classes index (what every refill scans) holds finished classes until a rebuild and ends
# each link's stretch in free slots for the classes to come: both are skipped, yet read. It is rebuilt
# once 1/INDEX_SLACK of it has finished and gives each link 1/INDEX_SLACK more room (was 1/2 each): a
# rebuild, one pass over the active classes' links, is cheap against the scans it saves.
INDEX_SLACK = 8

# Every rate change pushes a class's new finish onto the finish heap and leaves its old entry there,
# stale, to be popped when it reaches the top: the heap grew to its room (twice the classes a run can
# hold) before a rebuild, and popping the stale entries of a heap of 10^5-10^6 entries was 16-19% of a
# 256-GPU run. Rebuilt once it holds HEAP_SLACK entries per live class (a pass over the active classes,
# every few events' worth of pushes) it stays small and in cache. The valid entries are the same either
# way (a finish is the class's, whatever the heap holds), so the events and results are too.
HEAP_SLACK = 4

# With a finish window an event can move a large share of the classes; once the last one moved at least
# 1/WHOLE_REFILL_SHARE of those in flight, the next fills them all again from scratch: cheaper than the
# local refill's max-min checks, which read every class on each moved class's links (measured at 1024
# GPUs, window 3e-3: 66.5 s of loop against 115 s; at 512 GPUs within noise). The exact simulation
# always refills locally (bit for bit).
WHOLE_REFILL_SHARE = 4


def _inlined(fn: Any) -> Any:
    """A step that numba inlines where it is called (its IR, not a call). The thin driver steps, called
    once or more per flow: the 58-layer forward at EP64 ran 15-25% faster with them inlined when bundles
    were tuples (every array counted per call). ``_admit`` and ``_network_step``, called once each: their
    own compile re-generated the code of everything they call, which play's compile does again (a cold
    warm-up 19-22 s against 30-32 s with them inlined, alternating)."""
    return _njit(cache=True, inline="always")(fn)


# -- small compiled helpers ---------------------------------------------------------------------------
@_njit_inner
def _sort_members(flows: np.ndarray, groups: np.ndarray, target: np.ndarray) -> np.ndarray:
    """Order of ``flows`` by (group, finish target, flow id): ``np.lexsort((flows, target[flows],
    groups))`` as the SimPy path orders class members, by a hand-written merge sort (library sorts cost
    seconds of a cold compile)."""
    n = flows.shape[0]
    order = kernels.ints_from(0, n)
    tmp = np.empty(n, dtype=np.int64)
    width = 1
    while width < n:
        lo = 0
        while lo < n:
            mid = min(lo + width, n)
            hi = min(lo + 2 * width, n)
            i, j, k = lo, mid, lo
            while i < mid and j < hi:
                a, b = order[i], order[j]
                ga, gb = groups[a], groups[b]
                if ga != gb:
                    take_b = gb < ga
                else:
                    ta, tb = target[flows[a]], target[flows[b]]
                    take_b = tb < ta if ta != tb else flows[b] < flows[a]
                if take_b:
                    tmp[k] = b
                    j += 1
                else:
                    tmp[k] = a
                    i += 1
                k += 1
            while i < mid:
                tmp[k] = order[i]
                i += 1
                k += 1
            while j < hi:
                tmp[k] = order[j]
                j += 1
                k += 1
            lo = hi
        order, tmp = tmp, order
        width *= 2
    return order


@_njit_inner
def _index_into(
    act: np.ndarray,
    cl_ptr: np.ndarray,
    cl_link: np.ndarray,
    lk_ptr: np.ndarray,
    lk_flow: np.ndarray,
    lk_fill: np.ndarray,
    dummy: int,
) -> None:
    """The link -> active classes index of :func:`~moe_placement.simulator.kernels.link_index` (classes
    in ``act`` order per link), written into preallocated arrays with room to grow: each link's
    stretch ``lk_flow[lk_ptr[m]:lk_ptr[m + 1]]`` ends in free slots holding ``dummy`` (a class that is
    never active, so every kernel skips it), and ``lk_fill[m]`` is the first free one."""
    num_links = lk_ptr.shape[0] - 1
    lk_fill[:] = 0
    for c in act:
        for j in range(cl_ptr[c], cl_ptr[c + 1]):
            lk_fill[cl_link[j]] += 1
    total = 0
    for m in range(num_links):
        total += lk_fill[m] + lk_fill[m] // INDEX_SLACK + 2
    slack = total <= lk_flow.shape[0]
    lk_ptr[0] = 0
    for m in range(num_links):
        room = lk_fill[m] + lk_fill[m] // INDEX_SLACK + 2 if slack else lk_fill[m]
        lk_ptr[m + 1] = lk_ptr[m] + room
        lk_fill[m] = lk_ptr[m]
    for c in act:
        for j in range(cl_ptr[c], cl_ptr[c + 1]):
            m = cl_link[j]
            lk_flow[lk_fill[m]] = c
            lk_fill[m] += 1
    for m in range(num_links):
        for k in range(lk_fill[m], lk_ptr[m + 1]):
            lk_flow[k] = dummy


@_njit_inner
def _index_add(
    first: int,
    count: int,
    cl_ptr: np.ndarray,
    cl_link: np.ndarray,
    lk_ptr: np.ndarray,
    lk_flow: np.ndarray,
    lk_fill: np.ndarray,
) -> bool:
    """Append classes ``first .. first + count - 1`` (the newest, so the order per link stays the
    creation order) to the index; False when a link's stretch is full (the caller then rebuilds the
    whole index, so what was added before does not matter)."""
    for c in range(first, first + count):
        for j in range(cl_ptr[c], cl_ptr[c + 1]):
            m = cl_link[j]
            if lk_fill[m] >= lk_ptr[m + 1]:
                return False
            lk_flow[lk_fill[m]] = c
            lk_fill[m] += 1
    return True


@_njit_inner
def _flag(ei: np.ndarray, value: bool) -> bool:
    """``value`` as a run-time bool: the kernels' flag arguments are passed as values, not literals
    (numba compiles a kernel again for every literal it is called with)."""
    return bool(ei[STATUS] >= 0) == value


# -- the timed actions' heap (time, then insertion order) ---------------------------------------------
@_njit_inner
def _push_action(
    h_time: np.ndarray,
    h_seq: np.ndarray,
    h_kind: np.ndarray,
    h_arg: np.ndarray,
    ps: np.ndarray,
    t: float,
    kind: int,
    arg: int,
) -> None:
    i = ps[P_HEAP]
    seq = ps[P_SEQ]
    ps[P_SEQ] += 1
    ps[P_HEAP] += 1
    while i > 0:
        up = (i - 1) >> 1
        if h_time[up] < t or (h_time[up] == t and h_seq[up] < seq):
            break
        h_time[i], h_seq[i], h_kind[i], h_arg[i] = h_time[up], h_seq[up], h_kind[up], h_arg[up]
        i = up
    h_time[i], h_seq[i], h_kind[i], h_arg[i] = t, seq, kind, arg


@_njit_inner
def _pop_action(
    h_time: np.ndarray, h_seq: np.ndarray, h_kind: np.ndarray, h_arg: np.ndarray, ps: np.ndarray
) -> tuple[int, int]:
    """Remove the first action; returns its (kind, argument)."""
    kind, arg = h_kind[0], h_arg[0]
    n = ps[P_HEAP] - 1
    ps[P_HEAP] = n
    t, seq, k, a = h_time[n], h_seq[n], h_kind[n], h_arg[n]
    i = 0
    while True:
        c = 2 * i + 1
        if c >= n:
            break
        if c + 1 < n and (
            h_time[c + 1] < h_time[c] or (h_time[c + 1] == h_time[c] and h_seq[c + 1] < h_seq[c])
        ):
            c += 1
        if t < h_time[c] or (t == h_time[c] and seq < h_seq[c]):
            break
        h_time[i], h_seq[i], h_kind[i], h_arg[i] = h_time[c], h_seq[c], h_kind[c], h_arg[c]
        i = c
    if n > 0:
        h_time[i], h_seq[i], h_kind[i], h_arg[i] = t, seq, k, a
    return kind, arg


# -- the classes' finish times: a heap, so an event costs what changed, not the classes in flight ------
# FluidNetwork scans every active class at every event for the next finish and for those due; at 1024
# GPUs that is ~10^5 classes per event. Here the finishes live in a heap of (finish, class, version)
# entries (eng[21:24]; ``eng[24][c]``, the class's current version: an entry of another version, or of a
# class no longer active, is stale and skipped), and the active set keeps the classes that emptied until
# they are half of it (``N_DEAD``), then drops them in one pass. Only a regrouping, or a rate change
# outside the local refill (lazy links), brings every class up to date at once (``HEAP_STALE``).
@_njit_inner
def _live(ei: np.ndarray) -> int:
    """Classes in the active set that still have members."""
    return ei[N_ACT] - ei[N_DEAD]


@_njit_inner
def _compact_act(arrays: Packed, eng: Packed, ei: np.ndarray) -> None:
    """Drop the emptied classes from the active set (order kept)."""
    if ei[N_DEAD] == 0:
        return
    s = _view(arrays)
    act_buf = eng[0]
    k = 0
    for i in range(ei[N_ACT]):
        c = act_buf[i]
        if s.is_active[c]:
            act_buf[k] = c
            k += 1
    ei[N_ACT] = k
    ei[N_DEAD] = 0


@_njit_inner
def _push_finish(
    h_t: np.ndarray,
    h_c: np.ndarray,
    h_v: np.ndarray,
    ver: np.ndarray,
    ei: np.ndarray,
    c: int,
    finish: float,
) -> None:
    """Class ``c``'s entry at its current version (the caller rebuilt the heap when it was full). The
    heap's arrays (``eng[21:25]``) come one by one: a helper called per class takes only what it reads."""
    ei[FIN_HEAP] = kernels._heap_push(h_t, h_c, h_v, ei[FIN_HEAP], finish, c, ver[c])


@_njit_inner
def _rebuild_finishes(arrays: Packed, eng: Packed, ei: np.ndarray) -> None:
    """The heap again from the active classes' current finish times (stale entries dropped), built
    in place bottom up (:func:`kernels.heapify`)."""
    s = _view(arrays)
    h_t, h_c, h_v, ver = eng[21], eng[22], eng[23], eng[24]
    n = 0
    for c in eng[0][: ei[N_ACT]]:
        if s.is_active[c]:
            h_t[n], h_c[n], h_v[n] = s.finish[c], c, ver[c]
            n += 1
    kernels.heapify(h_t, h_c, h_v, n)
    ei[FIN_HEAP] = n
    ei[HEAP_STALE] = 0


@_njit_inner
def _heap_full(h_t: np.ndarray, ei: np.ndarray) -> bool:
    """Time to rebuild the finish heap from the active classes: no room for one more entry, or
    :data:`HEAP_SLACK` entries per live class (most of them stale)."""
    n = ei[FIN_HEAP]
    return n >= h_t.shape[0] or n >= HEAP_SLACK * _live(ei) + 64


@_njit_inner
def _next_finish(
    is_active: np.ndarray,
    h_t: np.ndarray,
    h_c: np.ndarray,
    h_v: np.ndarray,
    ver: np.ndarray,
    ei: np.ndarray,
) -> float:
    """The earliest finish of an active class (stale entries on top are dropped); inf when none."""
    while ei[FIN_HEAP] > 0:
        c = h_c[0]
        if is_active[c] and h_v[0] == ver[c]:
            return h_t[0]
        ei[FIN_HEAP] = kernels._heap_pop(h_t, h_c, h_v, ei[FIN_HEAP])
    return np.inf


@_njit_inner
def _advance_classes(
    arrays: Packed,
    eng: Packed,
    ei: np.ndarray,
    classes: np.ndarray,
    now: float,
) -> float:
    """:func:`~moe_placement.simulator.kernels.advance` for the only classes whose rate can have
    changed, ``classes`` (the refill's set: it holds the event's new and shrunk classes): their finish
    times move and enter the heap. Returns the earliest finish of every active class."""
    s = _view(arrays)
    h_t, h_c, h_v, ver = eng[21], eng[22], eng[23], eng[24]
    for c in classes:
        if not s.changed[c]:
            continue
        kernels.advance_class(
            c, now, s.rate, s.changed, s.prog, s.t_upd, s.old_rate, s.next_target, s.finish
        )
        if s.is_active[c]:
            ver[c] += 1
            if _heap_full(h_t, ei):
                _rebuild_finishes(arrays, eng, ei)  # pushes ``c`` at its new version too
            else:
                _push_finish(h_t, h_c, h_v, ver, ei, c, s.finish[c])
    return _next_finish(s.is_active, h_t, h_c, h_v, ver, ei)


@_njit_inner
def _advance_all(arrays: Packed, eng: Packed, ei: np.ndarray, now: float) -> float:
    """:func:`~moe_placement.simulator.kernels.advance` over every active class, and the heap rebuilt
    (after a regrouping, or rates set outside the local refill)."""
    _compact_act(arrays, eng, ei)
    best = kernels.advance(arrays, eng[0][: ei[N_ACT]], now)
    _rebuild_finishes(arrays, eng, ei)
    return best


@_njit_inner
def _pop_due(arrays: Packed, eng: Packed, ei: np.ndarray, limit: float) -> np.ndarray:
    """The active classes whose finish is at most ``limit``, taken off the heap, in class id order (the
    active set's order: classes join it as they form, ids ascending)."""
    s = _view(arrays)
    h_t, h_c, h_v, ver, due = eng[21], eng[22], eng[23], eng[24], eng[25]
    n = 0
    while ei[FIN_HEAP] > 0:
        c = h_c[0]
        valid = s.is_active[c] and h_v[0] == ver[c]
        if valid and h_t[0] > limit:
            break
        ei[FIN_HEAP] = kernels._heap_pop(h_t, h_c, h_v, ei[FIN_HEAP])
        if valid:
            due[n] = c
            n += 1
    return kernels.sort_ints(due[:n])


# -- the fluid network's event handling (FluidNetwork, method for method) -----------------------------
@_njit_inner
def _new_classes(
    arrays: Packed,
    eng: Packed,
    ei: np.ndarray,
    flows: np.ndarray,
    groups: np.ndarray,
    now: float,
) -> int:
    """One class per group of ``flows``, appended to the active set (FluidNetwork._new_classes);
    returns the number formed, or -1 when they do not fit (nothing changed then)."""
    s = _view(arrays)
    act_buf = eng[0]
    order = _sort_members(flows, groups, s.target)
    n = flows.shape[0]
    members = np.empty(n, dtype=np.int64)
    for i in range(n):
        members[i] = flows[order[i]]
    count = 0
    for i in range(n):
        if i == 0 or groups[order[i]] != groups[order[i - 1]]:
            count += 1
    bounds = np.empty(count + 1, dtype=np.int64)
    k = 0
    for i in range(n):
        if i == 0 or groups[order[i]] != groups[order[i - 1]]:
            bounds[k] = i
            k += 1
    bounds[count] = n
    first = ei[N_CLASSES]
    if first + count + 1 > s.rate.shape[0] or ei[N_ACT] + count > act_buf.shape[0]:
        return -1
    need = s.cl_ptr[first]
    zneed = s.cz_ptr[first]
    for i in range(count):
        h = members[bounds[i]]
        need += s.fl_ptr[h + 1] - s.fl_ptr[h]
    for i in range(n):
        f = members[i]
        zneed += s.fl_ptr[f + 1] - s.fl_ptr[f]
    if need > s.cl_link.shape[0] or zneed > s.cz_link.shape[0]:
        return -1
    if ei[CM_USED] + n > s.cm_flow.shape[0]:
        return -1
    kernels.build_classes(arrays, first, members, bounds, ei[CM_USED])
    ei[CM_USED] += n
    ei[N_CLASSES] += count
    nact = ei[N_ACT]
    for c in range(first, first + count):
        s.is_active[c] = True
        s.rate[c] = 0.0
        s.old_rate[c] = 0.0
        s.lazy_rate[c] = 0.0
        s.changed[c] = 1
        s.prog[c] = 0.0
        s.t_upd[c] = now
        s.bottleneck[c] = 0
        act_buf[nact] = c
        nact += 1
    ei[N_ACT] = nact
    return count


@_njit_inner
def _active_flows(arrays: Packed, act: np.ndarray) -> np.ndarray:
    """The members still in flight of the active classes, sorted by id."""
    s = _view(arrays)
    total = 0
    for c in act:
        total += s.c_end[c] - s.c_head[c]
    out = np.empty(total, dtype=np.int64)
    k = 0
    for c in act:
        for j in range(s.c_head[c], s.c_end[c]):
            out[k] = s.cm_flow[j]
            k += 1
    return kernels.sort_ints(out)


@_njit_inner
def _solve(
    arrays: Packed,
    eng: Packed,
    ei: np.ndarray,
    ef: np.ndarray,
    scr: Packed,
    now: float,
    keep_below: float,
    seeds: np.ndarray,
    seed_links: np.ndarray,
    verdict: int,
) -> float:
    """New rates after the event (FluidNetwork._solve); the next finish time, or NaN when the caller
    must go on (regroup, then advance)."""
    s = _view(arrays)
    threshold = keep_below * (1.0 - 1e-12) if np.isfinite(keep_below) else keep_below
    if ei[INDEX_STALE] or _live(ei) * INDEX_SLACK < ei[INDEX_SIZE] * (INDEX_SLACK - 1):
        # rebuilt after a regrouping, when a link's stretch is full, or when finished classes fill it
        _compact_act(arrays, eng, ei)
        act = eng[0][: ei[N_ACT]]
        _index_into(act, s.cl_ptr, s.cl_link, s.lk_ptr, s.lk_flow, eng[18], s.rate.shape[0] - 1)
        ei[INDEX_STALE] = 0
        ei[INDEX_SIZE] = act.shape[0]
    ei[RECOMPUTES] += 1
    # the lazy links' bookkeeping (a pass over every active class and every link) only matters once a
    # link has gone lazy, or for a regrouping's verdict: FluidNetwork's whole solve then
    if ei[ANY_LAZY] != 0 or verdict in (REGROUP, REGROUP_IF_SLACK):
        _compact_act(arrays, eng, ei)
        act = eng[0][: ei[N_ACT]]
        refilled, _rounds, worst, lazy_worst, next_finish = kernels.solve_view(
            s, act, seeds, seed_links, threshold, _flag(ei, True), now, verdict, scr
        )
        ei[REFILLED] += refilled
        ef[WORST] = max(ef[WORST], worst, lazy_worst)
        if np.isnan(next_finish):
            ei[HEAP_STALE] = 1
        else:
            _rebuild_finishes(arrays, eng, ei)
        return next_finish
    # otherwise nothing lazy to load: the local refill, then only its set can have moved
    whole = ef[FINISH_WINDOW] > FINISH_TOL and ei[LAST_MOVED] * WHOLE_REFILL_SHARE >= _live(ei)
    if whole:
        members = _refill_all(arrays, eng, ei, scr, threshold)
        ei[WHOLE_REFILLS] += 1
    else:
        refilled, _rounds = kernels.refill_view(s, seeds, seed_links, threshold, scr)
        members = scr[2][:refilled]
    ei[REFILLED] += members.shape[0]
    # the highest utilisation so far: a link's load rises only in a refill, on its set's links
    worst = ef[WORST]
    moved = 0
    for c in members:
        moved += s.changed[c]
        for j in range(s.cl_ptr[c], s.cl_ptr[c + 1]):
            m = s.cl_link[j]
            worst = max(worst, s.used[m] / s.cap[m])
    ef[WORST] = worst
    ei[LAST_MOVED] = moved
    if verdict == KEEP_OPEN:
        ei[HEAP_STALE] = 1
        return np.nan
    if whole:  # most classes moved: the heap built anew costs less than a push for each
        return _advance_all(arrays, eng, ei, now)
    return _advance_classes(arrays, eng, ei, members, now)


@_njit_inner
def _refill_all(
    arrays: Packed, eng: Packed, ei: np.ndarray, scr: Packed, keep_below: float
) -> np.ndarray:
    """Every active class at or above ``keep_below`` filled again from scratch (the same max-min
    allocation as the local refill, its sums in another order). Returns the active set."""
    _compact_act(arrays, eng, ei)
    act = eng[0][: ei[N_ACT]]
    kernels.full_refill_view(_view(arrays), act, keep_below, scr)
    return act


@_njit_inner
def _lazy_overloaded(arrays: Packed, eng: Packed, ei: np.ndarray, ef: np.ndarray) -> bool:
    """A lazy link over its capacity rejoins the solver, with a doubling back-off (FluidNetwork)."""
    s = _view(arrays)
    strikes, barred = eng[2], eng[3]
    over = False
    any_lazy = False
    worst = -1.0
    for m in range(s.cap.shape[0]):
        if s.lazy[m]:
            any_lazy = True
            if s.lazy_used[m] > s.cap[m] * (1.0 + 1e-9):
                over = True
            else:
                worst = max(worst, s.lazy_used[m] / s.cap[m])
    if not any_lazy:
        return False
    if not over:
        ef[WORST] = max(ef[WORST], worst)
        return False
    for m in range(s.cap.shape[0]):
        if s.lazy[m] and s.lazy_used[m] > s.cap[m] * (1.0 + 1e-9):
            s.lazy[m] = False
            strikes[m] += 1
            barred[m] = ei[REGROUPS] + 2 ** min(strikes[m], 20)
    return True


@_njit_inner
def _regroup_verdict(ei: np.ndarray) -> int:
    if (
        ei[SINCE_REGROUP] < ei[REGROUP_MIN_EVENTS]
        or ei[SINCE_REGROUP] * ei[REGROUP_FLOWS_PER_EVENT] < ei[ACTIVE_COUNT]
        or _live(ei) == 0
    ):
        return NO_REGROUP
    if ei[NEW_SINCE_REGROUP] * 4 > _live(ei):
        return REGROUP
    return REGROUP_IF_SLACK


@_njit_inner
def _regroup_due(arrays: Packed, ei: np.ndarray) -> bool:
    verdict = _regroup_verdict(ei)
    if verdict != REGROUP_IF_SLACK:
        return verdict == REGROUP
    s = _view(arrays)
    for m in range(s.cap.shape[0]):
        if not s.lazy[m] and s.used[m] > 0.0 and s.used[m] < s.cap[m] * LAZY_BELOW:
            return True
    return False


@_inlined
def _regroup(
    arrays: Packed,
    eng: Packed,
    ei: np.ndarray,
    ef: np.ndarray,
    scr: Packed,
    now: float,
    extra: np.ndarray,
) -> bool:
    """Re-form every class from the flows in flight (and ``extra`` arrivals) under the current lazy set,
    solved from scratch, again while a lazy link overloads (FluidNetwork._regroup). False when the
    classes do not fit their room."""
    s = _view(arrays)
    while True:
        ei[REGROUPS] += 1
        ei[SINCE_REGROUP] = 0
        ei[NEW_SINCE_REGROUP] = 0
        act = eng[0][: ei[N_ACT]]
        flows = _active_flows(arrays, act)
        for f in flows:
            c = s.cls[f]
            prog_now = s.prog[c] + s.old_rate[c] * (now - s.t_upd[c])
            s.target[f] = max(s.target[f] - prog_now, 0.0)
        if extra.shape[0]:
            flows = kernels.sort_ints(kernels.concat_ints(flows, extra))
            extra = extra[:0]
        for c in range(ei[N_CLASSES]):
            s.is_active[c] = False
        ei[N_CLASSES] = 0
        ei[CM_USED] = 0
        ei[N_ACT] = 0
        ei[N_DEAD] = 0
        ei[FIN_HEAP] = 0
        ei[HEAP_STALE] = 1
        s.used[:] = 0.0
        s.lazy_used[:] = 0.0
        ei[INDEX_STALE] = 1
        if not flows.shape[0]:
            return True
        groups = kernels.classify(arrays, flows, _flag(ei, False), _flag(ei, True))[1]
        if _new_classes(arrays, eng, ei, flows, groups, now) < 0:
            return False
        act = eng[0][: ei[N_ACT]]
        _solve(
            arrays,
            eng,
            ei,
            ef,
            scr,
            now,
            -np.inf,
            act.copy(),
            np.empty(0, dtype=np.int64),
            _KEEP_OPEN,
        )
        if not _lazy_overloaded(arrays, eng, ei, ef):
            return True


@_njit_inner
def _lazify(arrays: Packed, eng: Packed, ei: np.ndarray) -> None:
    """Solver links with clear slack leave the solver; every flow keeps a solver link."""
    s = _view(arrays)
    barred = eng[3]
    for m in range(s.cap.shape[0]):
        if s.used[m] < s.cap[m] * LAZY_BELOW and barred[m] <= ei[REGROUPS]:
            s.lazy[m] = True
            ei[ANY_LAZY] = 1
    act = eng[0][: ei[N_ACT]]
    kernels.classify(arrays, _active_flows(arrays, act), _flag(ei, True), _flag(ei, False))


@_njit_inner
def _finish_due(
    arrays: Packed,
    eng: Packed,
    ei: np.ndarray,
    ef: np.ndarray,
    scr: Packed,
    now: float,
) -> tuple[float, np.ndarray, np.ndarray, np.ndarray]:
    """Complete the flows due by ``now`` (FluidNetwork._finish_due). Returns (the lowest rate that
    finished, the saturated links they left, the classes that shrank, the finished flow ids)."""
    s = _view(arrays)
    none = np.empty(0, dtype=np.int64)
    limit = now + ef[FINISH_WINDOW] * max(now - ef[WINDOW_ORIGIN], 1.0)
    if ef[NEXT_FINISH] > limit:
        return np.inf, none, none, none
    done_cls = _pop_due(arrays, eng, ei, limit)
    if not done_cls.shape[0]:
        return np.inf, none, none, none
    done_ids, seed_links, empty, low = kernels.finish_members(arrays, done_cls, now, limit, scr[8])
    ei[ACTIVE_COUNT] -= done_ids.shape[0]
    for c in empty:
        s.is_active[c] = False
    ei[N_DEAD] += empty.shape[0]
    if ei[N_DEAD] * 2 > ei[N_ACT]:
        _compact_act(arrays, eng, ei)
    nshrunk = 0
    shrunk = np.empty(done_cls.shape[0], dtype=np.int64)
    for c in done_cls:
        if not s.is_active[c]:
            continue
        shrunk[nshrunk] = c
        nshrunk += 1
        if not s.changed[c]:
            # due, yet no member within the tolerance: its entry goes back as it was
            _push_finish(eng[21], eng[22], eng[23], eng[24], ei, c, s.finish[c])
    return low, seed_links, shrunk[:nshrunk], done_ids


@_inlined
def _admit(
    arrays: Packed,
    eng: Packed,
    ei: np.ndarray,
    ef: np.ndarray,
    scr: Packed,
    now: float,
) -> tuple[int, np.ndarray]:
    """Put the arrived flows into classes (FluidNetwork._admit). Returns (1 and the new class ids;
    0 when they do not fit and a regrouping must take them in: ``ei[REGROUP_NEW]`` of them, still at
    the head of the pending list)."""
    s = _view(arrays)
    pend = eng[1]
    new = pend[: ei[N_PEND]].copy()
    ei[N_PEND] = 0
    for f in new:
        s.target[f] = eng[6][f]
    ei[ACTIVE_COUNT] += new.shape[0]
    any_lazy = False
    if ei[ANY_LAZY]:
        for m in range(s.lazy.shape[0]):
            if s.lazy[m]:
                any_lazy = True
                break
    rescued, groups = kernels.classify(arrays, new, any_lazy, _flag(ei, True))
    # out of class room between regroupings: regroup now, which compacts the classes to those in flight
    first = ei[N_CLASSES]
    if rescued or first + new.shape[0] + 1 > s.rate.shape[0]:
        ei[REGROUP_NEW] = new.shape[0]
        return 0, new[:0]
    formed = _new_classes(arrays, eng, ei, new, groups, now)
    if formed < 0:
        ei[REGROUP_NEW] = new.shape[0]
        return 0, new[:0]
    ei[NEW_SINCE_REGROUP] += new.shape[0]
    if not ei[INDEX_STALE]:
        if _index_add(first, formed, s.cl_ptr, s.cl_link, s.lk_ptr, s.lk_flow, eng[18]):
            ei[INDEX_SIZE] += formed
        else:
            ei[INDEX_STALE] = 1
    return 1, kernels.ints_from(first, formed)


@_inlined
def _network_step(
    arrays: Packed,
    eng: Packed,
    ei: np.ndarray,
    ef: np.ndarray,
    scr: Packed,
    now: float,
) -> np.ndarray:
    """One event of the fluid network (FluidNetwork._step): finish what is due, admit what arrived,
    re-solve; sets the next finish time and returns the finished flow ids. Where a regrouping is
    needed it sets ``ei[REGROUP_REQ]`` instead and returns: :func:`regroup_step` ends the event."""
    keep_below, seed_links, shrunk, done_ids = _finish_due(arrays, eng, ei, ef, scr, now)
    seeds = shrunk
    for f in done_ids:
        _complete(eng, f, now)
    if ei[N_PEND]:
        status, arrived = _admit(arrays, eng, ei, ef, scr, now)
        if status == 0:
            ei[REGROUP_REQ] = R_ADMIT
            return done_ids
        seeds = kernels.concat_ints(shrunk, arrived)
        keep_below = -np.inf
    if keep_below < np.inf and _live(ei):
        next_finish = _solve(
            arrays, eng, ei, ef, scr, now, keep_below, seeds, seed_links, _regroup_verdict(ei)
        )
        if not np.isnan(next_finish):
            ef[NEXT_FINISH] = next_finish
            return done_ids
        if _lazy_overloaded(arrays, eng, ei, ef):
            ei[REGROUP_REQ] = R_OVERLOAD
            return done_ids
    if _regroup_due(arrays, ei):
        ei[REGROUP_REQ] = R_DUE
        return done_ids
    _set_next_finish(arrays, eng, ei, ef, now)
    return done_ids


@_inlined
def _set_next_finish(
    arrays: Packed, eng: Packed, ei: np.ndarray, ef: np.ndarray, now: float
) -> None:
    """The end of an event: the next finish time. Nothing moved unless a regrouping ran (or lazy links
    set rates): then every class is brought up to date."""
    if ei[HEAP_STALE]:
        ef[NEXT_FINISH] = _advance_all(arrays, eng, ei, now)
    else:
        is_active = _view(arrays).is_active
        ef[NEXT_FINISH] = _next_finish(is_active, eng[21], eng[22], eng[23], eng[24], ei)


@_njit(cache=True)
def regroup_step(arrays: Packed, eng: Packed, ei: np.ndarray, ef: np.ndarray, scr: Packed) -> None:
    """End the event play left at a regrouping (``ei[REGROUP_REQ]``) as :func:`_network_step` did
    before play handed regroupings to Python: regroup (with the waiting arrivals, or after a lazy link
    overloaded and, if one is due, again with the lazy set widened), then the next finish time. play,
    called again, goes on from there. Rare: the loop regroups only when classes outgrow their room."""
    now = ef[NOW]
    code = ei[REGROUP_REQ]
    ei[REGROUP_REQ] = R_NONE
    new = eng[1][: ei[REGROUP_NEW]].copy() if code == R_ADMIT else np.empty(0, dtype=np.int64)
    ei[REGROUP_NEW] = 0
    while True:  # one call site: _regroup is inlined here
        if code == R_DUE:
            _lazify(arrays, eng, ei)
        if not _regroup(arrays, eng, ei, ef, scr, now, new):
            ei[STATUS] = OUT_OF_CLASSES
            return
        if code == R_ADMIT:
            ef[NEXT_FINISH] = _advance_all(arrays, eng, ei, now)
            return
        if code != R_OVERLOAD or not _regroup_due(arrays, ei):
            break
        code = R_DUE  # after an overload, a regrouping that is due runs too (widening the lazy set)
        new = new[:0]
    _set_next_finish(arrays, eng, ei, ef, now)


@_njit_inner
def _complete(eng: Packed, f: int, now: float) -> None:
    """A flow's last byte left: its bytes count on every link of its route."""
    link_bytes, size_bytes, fend, route_of = eng[4], eng[6], eng[9], eng[10]
    rf_ptr, rf_link, rf_coef = eng[12], eng[13], eng[14]
    by_phase = eng[20]
    offset = eng[19][f] * link_bytes.shape[0]
    r = route_of[f]
    for j in range(rf_ptr[r], rf_ptr[r + 1]):
        link_bytes[rf_link[j]] += rf_coef[j] * size_bytes[f]
        by_phase[offset + rf_link[j]] += rf_coef[j] * size_bytes[f]
    fend[f] = now


# -- the phase driver (collectives._PhaseDriver, callback for callback) -------------------------------
# ``plan``: (direct, stage1, stage2 [G, G] bytes; own, expected, relay_in [G]; stage-2 targets CSR
# t_ptr [G + 1], t_dst; route ids rid_direct, rid_relay [G, G]; ready [G] us). ``drv``: (got,
# start_us, end_us, arrived [G]; released, pend_amt, chain_piece [G, G]; inflight, chain_left [G, G];
# i_kind, i_src, i_dst [infos]; i_bytes, i_lat [infos]; h_time, h_seq, h_kind, h_arg [actions];
# flags [G]: done).
@_njit_inner
def _send(
    ft: tuple[np.ndarray, ...],
    eng: Packed,
    ei: np.ndarray,
    drv: Packed,
    now: float,
    src: int,
    dst: int,
    bytes_: float,
    route: int,
    kind: int,
    overhead_us: float,
) -> None:
    """One flow ``src -> dst`` over route ``route`` (collectives._PhaseDriver.send +
    FluidNetwork.transfer)."""
    fl_ptr, fl_link, fl_coef = ft
    i_kind, i_src, i_dst, i_bytes, i_lat = drv[10], drv[11], drv[12], drv[13], drv[14]
    h_time, h_seq, h_kind, h_arg = drv[15], drv[16], drv[17], drv[18]
    rt_lat, rf_ptr = eng[8], eng[12]
    rb_ptr, rb_link, rb_coef = eng[15], eng[16], eng[17]
    ps = drv[20]
    info = ps[P_INFO]
    if info >= i_kind.shape[0]:
        ei[STATUS] = OUT_OF_FLOWS
        return
    ps[P_INFO] += 1
    lat = rt_lat[route] + overhead_us
    i_kind[info], i_src[info], i_dst[info], i_bytes[info], i_lat[info] = kind, src, dst, bytes_, lat
    if bytes_ <= 0 or rf_ptr[route + 1] == rf_ptr[route]:
        # nothing to move over the network (a GPU-local copy): sent now, delivered after the latency
        _push_action(h_time, h_seq, h_kind, h_arg, ps, now, A_LOCAL_SENT, info)
        _push_action(h_time, h_seq, h_kind, h_arg, ps, now + lat, A_DELIVER, info)
        return
    fid = ei[N_FLOWS]
    n = rb_ptr[route + 1] - rb_ptr[route]
    start = fl_ptr[fid]
    if fid + 1 >= fl_ptr.shape[0] or start + n > fl_link.shape[0]:
        ei[STATUS] = OUT_OF_FLOWS
        return
    for j in range(n):
        fl_link[start + j] = rb_link[rb_ptr[route] + j]
        fl_coef[start + j] = rb_coef[rb_ptr[route] + j]
    fl_ptr[fid + 1] = start + n
    ei[N_FLOWS] += 1
    eng[6][fid] = bytes_
    eng[5][fid] = lat
    eng[7][fid] = now
    eng[10][fid] = route
    eng[11][fid] = info
    eng[19][fid] = ps[P_PHASE]
    eng[1][ei[N_PEND]] = fid
    ei[N_PEND] += 1


@_njit_inner
def _deliver(drv: Packed, plan: Packed, now: float, dst: int, bytes_: float) -> None:
    """``bytes_`` reached their final destination; the GPU is done once all have."""
    got = drv[0]
    expected = plan[4]
    got[dst] += bytes_
    if not drv[19][dst] and got[dst] >= expected[dst] * (1 - _TOL):
        _mark_done(drv, now, dst)


@_njit_inner
def _mark_done(drv: Packed, now: float, g: int) -> None:
    """GPU ``g`` has everything of the phase: its completion time, and the queue the chain reads."""
    drv[2][g] = now
    drv[19][g] = 1
    queue = drv[4]
    queue[0] += 1
    queue[queue[0]] = g


@_njit_inner
def _launchable(
    released: np.ndarray,
    pend_amt: np.ndarray,
    inflight: np.ndarray,
    stage2: np.ndarray,
    chunks: float,
    r: int,
    d: int,
) -> bool:
    """Should relay ``r`` send what it holds for ``d`` now? Not while a send is under way, nor while less
    than a chunk waits and more is to come. Asked before :func:`_launch` is called: most calls would
    send nothing."""
    amount = pend_amt[r, d]
    if amount <= 0 or inflight[r, d]:
        return False
    return not (
        amount < stage2[r, d] / chunks * (1 - _TOL) and released[r, d] < stage2[r, d] * (1 - _TOL)
    )


@_inlined
def _launch(
    ft: tuple[np.ndarray, ...],
    eng: Packed,
    ei: np.ndarray,
    drv: Packed,
    plan: Packed,
    par: np.ndarray,
    now: float,
    r: int,
    d: int,
) -> None:
    """Relay ``r`` sends what it holds for ``d`` (the caller asked :func:`_launchable`)."""
    pend_amt, inflight, rid_relay = drv[6], drv[8], plan[9]
    amount = pend_amt[r, d]
    pend_amt[r, d] = 0.0
    inflight[r, d] = 1
    _send(ft, eng, ei, drv, now, r, d, amount, rid_relay[r, d], K_STAGE2, par[3])


@_njit_inner
def _relay_arrive(
    ft: tuple[np.ndarray, ...],
    eng: Packed,
    ei: np.ndarray,
    drv: Packed,
    plan: Packed,
    par: np.ndarray,
    now: float,
    r: int,
    bytes_: float,
) -> None:
    """Stage-1 bytes landed on relay ``r``: release the matching share of its stage-2 sends."""
    arrived, released, pend_amt = drv[3], drv[5], drv[6]
    stage2, own, relay_in, t_ptr, t_dst = plan[2], plan[3], plan[5], plan[6], plan[7]
    arrived[r] += bytes_
    if own[r] > 0:
        _deliver(drv, plan, now, r, bytes_ * own[r] / relay_in[r])
    complete = arrived[r] >= relay_in[r] * (1 - _TOL)
    if par[2] > 0 and not complete:  # store-and-forward: all at once when everything has landed
        return
    for j in range(t_ptr[r], t_ptr[r + 1]):
        d = t_dst[j]
        full = stage2[r, d]
        target = full if complete else full * min(arrived[r] / relay_in[r], 1.0)
        add = target - released[r, d]
        if add > 0:
            released[r, d] = target
            pend_amt[r, d] += add
            if _launchable(released, pend_amt, drv[8], stage2, par[1], r, d):
                _launch(ft, eng, ei, drv, plan, par, now, r, d)


@_inlined
def _next_piece(
    ft: tuple[np.ndarray, ...],
    eng: Packed,
    ei: np.ndarray,
    drv: Packed,
    plan: Packed,
    par: np.ndarray,
    now: float,
    src: int,
    r: int,
) -> None:
    """The next stage-1 piece ``src -> r``, once the one before has left."""
    chain_left, chain_piece = drv[9], drv[7]
    if chain_left[src, r] == 0:
        return
    chain_left[src, r] -= 1
    _send(ft, eng, ei, drv, now, src, r, chain_piece[src, r], plan[9][src, r], K_STAGE1, par[3])


@_njit_inner
def _start(
    ft: tuple[np.ndarray, ...],
    eng: Packed,
    ei: np.ndarray,
    drv: Packed,
    plan: Packed,
    par: np.ndarray,
    now: float,
    g: int,
) -> None:
    """GPU ``g`` is ready: its direct sends and its stage-1 chains go out."""
    direct, stage1, relay_in, rid_direct = plan[0], plan[1], plan[5], plan[8]
    chain_left, chain_piece = drv[9], drv[7]
    G = direct.shape[0]
    drv[1][g] = now
    for d in range(G):
        if direct[g, d] > 0:
            _send(ft, eng, ei, drv, now, g, d, direct[g, d], rid_direct[g, d], K_DIRECT, par[3])
    if par[4] > 0:  # a plan with a first stage
        pieces = int(par[0])
        for r in range(G):
            if stage1[g, r] > 0:
                chain_left[g, r] = pieces
                chain_piece[g, r] = stage1[g, r] / pieces
                _next_piece(ft, eng, ei, drv, plan, par, now, g, r)
    if par[5] > 0 and relay_in[g] <= 0:  # a relay with nothing coming in
        _relay_arrive(ft, eng, ei, drv, plan, par, now, g, 0.0)


@_njit_inner
def _on_sent(
    ft: tuple[np.ndarray, ...],
    eng: Packed,
    ei: np.ndarray,
    drv: Packed,
    plan: Packed,
    par: np.ndarray,
    now: float,
    info: int,
) -> None:
    kind, src, dst = drv[10][info], drv[11][info], drv[12][info]
    if kind == K_STAGE1:
        _next_piece(ft, eng, ei, drv, plan, par, now, src, dst)
    elif kind == K_STAGE2:
        drv[8][src, dst] = 0
        if _launchable(drv[5], drv[6], drv[8], plan[2], par[1], src, dst):
            _launch(ft, eng, ei, drv, plan, par, now, src, dst)


@_njit_inner
def _on_delivered(
    ft: tuple[np.ndarray, ...],
    eng: Packed,
    ei: np.ndarray,
    drv: Packed,
    plan: Packed,
    par: np.ndarray,
    now: float,
    info: int,
) -> None:
    kind, dst, bytes_ = drv[10][info], drv[12][info], drv[13][info]
    if kind == K_STAGE1:
        _relay_arrive(ft, eng, ei, drv, plan, par, now, dst, bytes_)
    else:
        _deliver(drv, plan, now, dst, bytes_)


@_njit_inner
def _do_action(
    ft: tuple[np.ndarray, ...],
    eng: Packed,
    ei: np.ndarray,
    drv: Packed,
    plan: Packed,
    par: np.ndarray,
    now: float,
) -> None:
    """Run the phase's first timed action (due now)."""
    kind, arg = _pop_action(drv[15], drv[16], drv[17], drv[18], drv[20])
    if kind == A_START:
        _start(ft, eng, ei, drv, plan, par, now, arg)
        if plan[4][arg] <= 0 and not drv[19][arg]:
            _mark_done(drv, now, arg)  # nothing to receive: done as soon as it is ready
    elif kind == A_LOCAL_SENT:
        _on_sent(ft, eng, ei, drv, plan, par, now, arg)
    else:
        _on_delivered(ft, eng, ei, drv, plan, par, now, arg)


@_njit_inner
def _chain(
    first: Packed,
    second: Packed,
    mode: int,
    delay: np.ndarray,
    now: float,
) -> None:
    """Start the second phase where the first is done: per GPU after ``delay[g]``, or everywhere once
    every GPU is (``CHAIN_BARRIER``)."""
    queue, ps, ps2 = first[4], first[20], second[20]
    G = delay.shape[0]
    while ps[P_SEEN] < queue[0]:
        ps[P_SEEN] += 1
        g = queue[ps[P_SEEN]]
        if mode == CHAIN_PER_GPU:
            _push_action(
                second[15], second[16], second[17], second[18], ps2, now + delay[g], A_START, g
            )
        elif ps[P_SEEN] == G:
            for h in range(G):
                _push_action(second[15], second[16], second[17], second[18], ps2, now, A_START, h)


@_njit(cache=True)
def play(
    arrays: Packed,
    eng: Packed,
    ei: np.ndarray,
    ef: np.ndarray,
    drvs: tuple[Packed, Packed],
    plans: tuple[Packed, Packed],
    pars: np.ndarray,
    delay: np.ndarray,
    budget: int,
    scr: Packed,
) -> None:
    """Play a pair of phases on the network state (``arrays``, ``eng``, ``ei``, ``ef``) from ``ef[NOW]``:
    the first with GPU g starting at ``ready[g]`` (its plan's), the second chained to it (``pars[0, 6]``:
    per GPU after ``delay``, or behind a barrier), for at most ``budget`` network events: call again
    until ``ei[PHASE_DONE]`` (every state lives in the arrays, so play goes on where it stopped; between
    calls the caller shows progress and takes signals). ``pars[p]``: (stage-1 pieces, relay chunks,
    store-and-forward, overhead us, has stage 1, has stage 2, chain mode). ``ei[STATUS]`` says whether
    it ran out of room."""
    d0, d1 = drvs
    p0, p1 = plans
    s = _view(arrays)
    ft = (s.fl_ptr, s.fl_link, s.fl_coef)  # all the driver needs of the bundle
    ready = p0[10]
    G = ready.shape[0]
    mode = int(pars[0, 6])
    if not ei[PHASE_STARTED]:
        ei[PHASE_STARTED] = 1
        for g in range(G):
            if np.isfinite(ready[g]):
                _push_action(d0[15], d0[16], d0[17], d0[18], d0[20], ready[g], A_START, g)
    now = ef[NOW]
    stash = eng[26]
    stop_at = ei[EVENTS] + budget
    while ei[STATUS] == OK:
        if ei[STASHED]:  # the end of an event a regrouping interrupted (regroup_step has run)
            ei[STASHED] = 0
            done_ids = stash[: ei[N_STASH]]  # read before play next writes the stash
            _after_step(ft, eng, ei, ef, d0, d1, p0, p1, pars, mode, delay, done_ids, now)
            continue
        if ei[EVENTS] >= stop_at:
            ef[NOW] = now
            return
        t_net = ef[T_NET]
        t0 = d0[15][0] if d0[20][P_HEAP] else np.inf
        t1 = d1[15][0] if d1[20][P_HEAP] else np.inf
        # arrivals wake the network at once; otherwise the next action or the network's own timer
        t = now if ei[N_PEND] > 0 else min(t_net, t0, t1)
        if t == np.inf:
            ei[PHASE_DONE] = 1
            break
        now = t
        # every action due now runs before the network's step (SimPy: the step waits a zero timeout)
        while ei[STATUS] == OK:
            t0 = d0[15][0] if d0[20][P_HEAP] else np.inf
            t1 = d1[15][0] if d1[20][P_HEAP] else np.inf
            if t0 <= now:
                _do_action(ft, eng, ei, d0, p0, pars[0], now)
                _chain(d0, d1, mode, delay, now)
            elif t1 <= now:
                _do_action(ft, eng, ei, d1, p1, pars[1], now)
            else:
                break
        if ei[STATUS] != OK or (ei[N_PEND] == 0 and t_net > now):
            continue
        ei[EVENTS] += 1
        ei[SINCE_REGROUP] += 1
        ei[ACT_SUM] += _live(ei)
        done_ids = _network_step(arrays, eng, ei, ef, scr, now)
        if ei[REGROUP_REQ]:  # Python runs regroup_step, then this event's end on the next call
            # a loop: an array slice assignment compiles ~2 s more (its shape-mismatch error message)
            for k in range(done_ids.shape[0]):
                stash[k] = done_ids[k]
            ei[N_STASH] = done_ids.shape[0]
            ei[STASHED] = 1
            ef[NOW] = now
            return
        _after_step(ft, eng, ei, ef, d0, d1, p0, p1, pars, mode, delay, done_ids, now)
    ef[NOW] = now


@_inlined
def _after_step(
    ft: tuple[np.ndarray, np.ndarray, np.ndarray],
    eng: Packed,
    ei: np.ndarray,
    ef: np.ndarray,
    d0: Packed,
    d1: Packed,
    p0: Packed,
    p1: Packed,
    pars: np.ndarray,
    mode: int,
    delay: np.ndarray,
    done_ids: np.ndarray,
    now: float,
) -> None:
    """After a network event: the network's next wake-up, and each finished flow's sent and delivered
    steps (a delivery after the flow's latency is a timed action)."""
    flat, info_of, phase_of = eng[5], eng[11], eng[19]
    nf = ef[NEXT_FINISH]
    ef[T_NET] = now + max(nf - now, 0.0) if np.isfinite(nf) else np.inf
    if ef[FINISH_WINDOW] > FINISH_TOL:
        # a window ends the finishes due within it on either side of the wake-up: as many end late
        # as end early, so the phase times carry no bias of the window's sign
        ef[T_NET] += ef[FINISH_WINDOW] * max(nf - ef[WINDOW_ORIGIN], 1.0)
    for f in done_ids:
        info = info_of[f]
        first = phase_of[f] == 0
        drv, plan, par = (d0, p0, pars[0]) if first else (d1, p1, pars[1])
        _on_sent(ft, eng, ei, drv, plan, par, now, info)
        if flat[f] > 0:
            _push_action(
                drv[15], drv[16], drv[17], drv[18], drv[20], now + flat[f], A_DELIVER, info
            )
        else:
            _on_delivered(ft, eng, ei, drv, plan, par, now, info)
        if first:
            _chain(d0, d1, mode, delay, now)


# -- Python side: routes, room, and the phases one after the other ------------------------------------
@dataclass
class PhaseOutcome:
    """One played phase: per-GPU start and completion times (us), the bytes it put on each link, and
    the flows it started (GPU-local copies included, as ``PhaseRun.flows`` counts them)."""

    name: str
    start_us: np.ndarray
    end_us: np.ndarray
    link_bytes: np.ndarray
    flows: int

    @property
    def span_us(self) -> float:
        """First GPU's start to last GPU's completion (``PhaseRun.span_us``)."""
        started = self.start_us[np.isfinite(self.start_us)]
        return float(self.end_us.max() - started.min()) if started.size else 0.0


@dataclass
class LoopStats:
    """The fluid network's counters over every phase played (``FluidNetwork``'s names)."""

    events: int
    recomputes: int
    flows: int
    worst_utilisation: float
    regroups: int
    mean_active_classes: float  # active classes at an event, on average
    refilled: int  # classes whose rate was recomputed, summed over recomputes
    whole_refills: int  # recomputes that filled every class again (only with a finish window)


class _Routes:
    """The routes the plans use, as CSR tables (all links, and binding links only) and, per plan, route
    ids per (source, destination) for direct sends and for relay sends."""

    def __init__(self, topo: Topology, plans: Sequence[PhasePlan]) -> None:
        self.topo = topo
        G = topo.cluster.num_gpus
        gpn = topo.gpn
        self._ids: dict[tuple[int, int, int, float], int] = {}
        self._routes: list[Route] = []
        self.rid_direct: list[np.ndarray] = []
        self.rid_relay: list[np.ndarray] = []
        for plan in plans:
            sm_coef = float(plan.sm_coef)
            rid_direct = np.full((G, G), -1, dtype=np.int64)
            rid_relay = np.full((G, G), -1, dtype=np.int64)
            for s, d in zip(*np.nonzero(plan.direct), strict=True):
                same = s // gpn == d // gpn
                use_rdma = plan.rdma and not (plan.nvlink_in_node and same)
                mode = 2 if use_rdma else 0
                rid_direct[s, d] = self._route(int(s), int(d), mode, sm_coef)
            for stage in (plan.stage1, plan.stage2):
                if stage is None:
                    continue
                for s, d in zip(*np.nonzero(stage), strict=True):
                    rid_relay[s, d] = self._route(int(s), int(d), 1, sm_coef)
            self.rid_direct.append(rid_direct)
            self.rid_relay.append(rid_relay)

    def _route(self, s: int, d: int, mode: int, sm_coef: float) -> int:
        """Route id of ``s -> d``: mode 0 direct (PXN across rails), 1 rail-local relay hop, 2 RDMA
        NIC to NIC; with ``sm_coef`` > 0 an NVLink copy also crosses the sender's SM link
        (``_PhaseDriver.send``)."""
        with_sm = sm_coef > 0 and s != d and s // self.topo.gpn == d // self.topo.gpn
        key = (s, d, mode, sm_coef if with_sm else 0.0)
        hit = self._ids.get(key)
        if hit is not None:
            return hit
        route = self.topo.route(s, d, direct_nic=mode == 1, rdma=mode == 2)
        if with_sm:
            route = _with_sm_link(self.topo, route, s, sm_coef)
        self._ids[key] = len(self._routes)
        self._routes.append(route)
        return self._ids[key]

    def tables(self, binding: np.ndarray) -> tuple[np.ndarray, ...]:
        """(latency, all-links CSR ptr/link/coef, binding-links CSR ptr/link/coef)."""
        lat = np.array([r.latency_us for r in self._routes], dtype=np.float64)
        full_l, full_c, bind_l, bind_c = [], [], [], []
        for r in self._routes:
            links = np.asarray(r.links, dtype=np.int64)
            coefs = np.asarray(r.coefs, dtype=np.float64)
            keep = binding[links] if links.size else np.zeros(0, dtype=bool)
            if links.size and not keep.any():
                keep = np.ones(links.size, dtype=bool)  # an unconstrained flow still needs a limit
            full_l.append(links)
            full_c.append(coefs)
            bind_l.append(links[keep])
            bind_c.append(coefs[keep])

        def csr(parts: list[np.ndarray], dtype: type) -> tuple[np.ndarray, np.ndarray]:
            ptr = np.zeros(len(parts) + 1, dtype=np.int64)
            ptr[1:] = np.cumsum([p.size for p in parts])
            flat: np.ndarray = (
                np.concatenate(parts).astype(dtype) if parts else np.zeros(0, dtype=dtype)
            )
            return ptr, flat

        f_ptr, f_link = csr(full_l, np.int64)
        _, f_coef = csr(full_c, np.float64)
        b_ptr, b_link = csr(bind_l, np.int64)
        _, b_coef = csr(bind_c, np.float64)
        return lat, f_ptr, f_link, f_coef, b_ptr, b_link, b_coef

    @property
    def longest_binding(self) -> int:
        return max((int(np.size(r.links)) for r in self._routes), default=1)


def _flow_bound(plan: PhasePlan, chunks: int) -> int:
    """Network flows a phase can start: its direct pairs, its stage-1 pieces, and per stage-2 pair at
    most one send per chunk's worth released (plus the rest)."""
    n = int(np.count_nonzero(plan.direct))
    pieces = chunks if getattr(plan, "relay", "pipelined") == "pipelined" else 1
    if plan.stage1 is not None:
        n += int(np.count_nonzero(plan.stage1)) * max(pieces, 1)
    if plan.stage2 is not None:
        n += int(np.count_nonzero(plan.stage2)) * (max(chunks, 1) + 2)
    return n


def _bundle(caps: np.ndarray, flows: int, classes: int, path: int) -> NetArrays:
    """The kernels' bundle with room for ``flows`` flows, ``classes`` classes, paths of ``path``
    binding links."""
    links = caps.size
    f = {
        "cap": caps,
        "used": np.zeros(links),
        "lazy": np.zeros(links, dtype=np.bool_),
        "lazy_used": np.zeros(links),
        "fl_ptr": np.zeros(flows + 1, dtype=np.int64),
        "fl_link": np.zeros(flows * path, dtype=np.int64),
        "fl_coef": np.zeros(flows * path),
        "target": np.zeros(flows),
        "cls": np.zeros(flows, dtype=np.int64),
        "cl_ptr": np.zeros(classes + 1, dtype=np.int64),
        "cl_link": np.zeros(classes * path, dtype=np.int64),
        "cl_unit": np.zeros(classes * path),
        "cl_coef": np.zeros(classes * path),
        "cz_ptr": np.zeros(classes + 1, dtype=np.int64),
        "cz_link": np.zeros(classes * path, dtype=np.int64),
        "cz_coef": np.zeros(classes * path),
        "cm_flow": np.zeros(classes, dtype=np.int64),
        "c_head": np.zeros(classes, dtype=np.int64),
        "c_end": np.zeros(classes, dtype=np.int64),
        "is_active": np.zeros(classes, dtype=np.bool_),
        "bottleneck": np.zeros(classes, dtype=np.int64),
        "rate": np.zeros(classes),
        "old_rate": np.zeros(classes),
        "lazy_rate": np.zeros(classes),
        "changed": np.zeros(classes, dtype=np.int8),
        "prog": np.zeros(classes),
        "t_upd": np.zeros(classes),
        "next_target": np.zeros(classes),
        "finish": np.zeros(classes),
        "lk_ptr": np.zeros(links + 1, dtype=np.int64),
        "lk_flow": np.zeros(2 * classes * path + 4 * links, dtype=np.int64),
    }
    return NetArrays(**f)


def _plan_arrays(plan: PhasePlan, rid_direct: np.ndarray, rid_relay: np.ndarray, ready: np.ndarray):
    """The plan as the loop reads it (see the comment above :func:`_send`)."""
    G = rid_direct.shape[0]
    zeros = np.zeros((G, G))
    stage1 = plan.stage1 if plan.stage1 is not None else zeros
    stage2 = plan.stage2 if plan.stage2 is not None else zeros
    own = plan.own if plan.own is not None else np.zeros(G)
    relay_in = stage1.sum(axis=0)
    t_ptr = np.zeros(G + 1, dtype=np.int64)
    t_ptr[1:] = np.cumsum(np.count_nonzero(stage2, axis=1))
    t_dst = np.nonzero(stage2)[1].astype(np.int64)  # row-major: per relay, ascending destination
    return (
        np.ascontiguousarray(plan.direct, dtype=np.float64),
        np.ascontiguousarray(stage1, dtype=np.float64),
        np.ascontiguousarray(stage2, dtype=np.float64),
        np.ascontiguousarray(own, dtype=np.float64),
        np.ascontiguousarray(plan.incoming_bytes(), dtype=np.float64),
        np.ascontiguousarray(relay_in, dtype=np.float64),
        t_ptr,
        t_dst,
        rid_direct,
        rid_relay,
        np.ascontiguousarray(ready, dtype=np.float64),
    )


def _driver_arrays(G: int, infos: int, phase: int) -> tuple[np.ndarray, ...]:
    actions = infos + 2 * G + 1
    state = np.zeros(5, dtype=np.int64)
    state[P_PHASE] = phase
    return (
        np.zeros(G),  # 0 got
        np.full(G, np.inf),  # 1 start_us
        np.zeros(G),  # 2 end_us
        np.zeros(G),  # 3 arrived
        np.zeros(G + 1, dtype=np.int64),  # 4 queue of GPUs done: count, then GPUs
        np.zeros((G, G)),  # 5 released
        np.zeros((G, G)),  # 6 pend_amt
        np.zeros((G, G)),  # 7 chain_piece
        np.zeros((G, G), dtype=np.int8),  # 8 inflight
        np.zeros((G, G), dtype=np.int64),  # 9 chain_left
        np.zeros(infos, dtype=np.int64),  # 10 i_kind
        np.zeros(infos, dtype=np.int64),  # 11 i_src
        np.zeros(infos, dtype=np.int64),  # 12 i_dst
        np.zeros(infos),  # 13 i_bytes
        np.zeros(infos),  # 14 i_lat
        np.zeros(actions),  # 15 h_time
        np.zeros(actions, dtype=np.int64),  # 16 h_seq
        np.zeros(actions, dtype=np.int64),  # 17 h_kind
        np.zeros(actions, dtype=np.int64),  # 18 h_arg
        np.zeros(G, dtype=np.int8),  # 19 done
        state,  # 20 counters (P_*)
    )


# Network events per call of the compiled loop, at most: between calls Python shows progress and takes
# signals (Ctrl-C, SIGTERM), so a call is also cut to about SLICE_S seconds - an event costs from ~20 us
# (64 GPUs) to ~2 ms (1024 GPUs), and the slice adapts to what the last one measured.
EVENTS_PER_CALL = 20_000
SLICE_S = 0.25


class OutOfRoomError(Exception):
    """The loop's arrays were sized too small (a bound was wrong): play again with more room."""

    def __init__(self, status: int) -> None:
        super().__init__(status)
        self.status = status


class _Loop:
    """One fluid network over ``topo`` in the compiled loop, playing pairs of phases one after another
    (state carried over, as one SimPy network plays every phase of a run)."""

    def __init__(
        self,
        topo: Topology,
        plans: Sequence[PhasePlan],
        chunks: int,
        flows: int,
        classes: int,
        progress: bool,
        finish_window: float | None = None,
    ) -> None:
        self.topo, self.chunks, self.progress = topo, chunks, progress
        self.G = topo.cluster.num_gpus
        self.routes = _Routes(topo, plans)
        self.route_index = {id(p): k for k, p in enumerate(plans)}
        caps = topo.capacity()
        self.caps = caps
        tables = self.routes.tables(topo.binding())
        path = max(self.routes.longest_binding, 1)
        self.net = _bundle(caps, flows, classes, path)
        self.arrays = kernels.pack_net(tuple(self.net))  # what kernels take: a pointer
        self.scr = kernels.scratch(classes, caps.size)
        links = caps.size
        lat, f_ptr, f_link, f_coef, b_ptr, b_link, b_coef = tables
        self.eng = (
            np.zeros(classes, dtype=np.int64),  # 0 act_buf
            np.zeros(flows, dtype=np.int64),  # 1 pend
            np.zeros(links, dtype=np.int64),  # 2 strikes
            np.zeros(links, dtype=np.int64),  # 3 barred
            np.zeros(links),  # 4 link_bytes
            np.zeros(flows),  # 5 latency per flow
            np.zeros(flows),  # 6 size_bytes
            np.zeros(flows),  # 7 start_us per flow
            lat,  # 8 route latency
            np.zeros(flows),  # 9 end_us per flow
            np.zeros(flows, dtype=np.int64),  # 10 route_of
            np.zeros(flows, dtype=np.int64),  # 11 info_of
            f_ptr,  # 12-14 routes, all links (CSR)
            f_link,
            f_coef,
            b_ptr,  # 15-17 routes, binding links (CSR)
            b_link,
            b_coef,
            np.zeros(links, dtype=np.int64),  # 18 lk_fill: each link's first free index slot
            np.zeros(flows, dtype=np.int64),  # 19 phase of each flow (0 or 1 of its pair)
            np.zeros(2 * links),  # 20 bytes per link of the pair's first and second phase
            np.zeros(2 * classes + 64),  # 21-23 the finish heap: time, class, version
            np.zeros(2 * classes + 64, dtype=np.int64),
            np.zeros(2 * classes + 64, dtype=np.int64),
            np.zeros(classes, dtype=np.int64),  # 24 each class's current version
            np.zeros(classes, dtype=np.int64),  # 25 the classes due at an event
            np.zeros(flows, dtype=np.int64),  # 26 the finished flows of an event a regrouping split
        )
        self.eng_bundle = bundles.packed(self.eng)  # what kernels take: a pointer
        self.ei = np.zeros(_EI_SIZE, dtype=np.int64)
        self.ei[REGROUP_MIN_EVENTS] = REGROUP_CADENCE[0]
        self.ei[REGROUP_FLOWS_PER_EVENT] = REGROUP_CADENCE[1]
        self.ef = np.zeros(_EF_SIZE)
        self.ef[NEXT_FINISH] = np.inf
        self.ef[T_NET] = np.inf
        # a window W ends the finishes due within W/2 on either side of the wake-up (see _after_step);
        # without one, the exact simulation's float tolerance
        self.ef[FINISH_WINDOW] = FINISH_TOL if finish_window is None else finish_window / 2

    def _par(self, plan: PhasePlan, mode: int) -> np.ndarray:
        pieces = self.chunks if plan.relay == "pipelined" else 1
        return np.array(
            [
                float(max(pieces, 1)),
                float(max(self.chunks, 1)),
                0.0 if plan.relay == "pipelined" else 1.0,
                float(plan.overhead_us),
                float(plan.stage1 is not None),
                float(plan.stage2 is not None),
                float(mode),
            ]
        )

    def play_pair(
        self,
        first: PhasePlan,
        second: PhasePlan,
        ready_us: np.ndarray,
        *,
        mode: int,
        delay_us: np.ndarray | None = None,
    ) -> tuple[PhaseOutcome, PhaseOutcome, np.ndarray]:
        """``first`` with GPU g starting at ``ready_us[g]``, then ``second`` chained to it (``mode``);
        returns both outcomes and the ids of the flows each started (phase 0 or 1 per flow, from the
        first flow of this pair on). Raises :class:`OutOfRoomError`."""
        eng, ei, ef = self.eng, self.ei, self.ef
        by_phase = eng[20]
        by_phase[:] = 0.0
        first_flow = int(ei[N_FLOWS])
        drvs, plans, pars, delay = self.pair_arguments(first, second, ready_us, mode, delay_us)
        finite = ready_us[np.isfinite(ready_us)]
        ef[NOW] = max(float(ef[NOW]), float(finite.min())) if finite.size else float(ef[NOW])
        if ef[FINISH_WINDOW] > FINISH_TOL:  # the window's share counts from the pair's start
            ef[WINDOW_ORIGIN] = ef[NOW]
        ei[PHASE_STARTED] = 0
        ei[PHASE_DONE] = 0
        self._run(drvs, plans, pars, delay, f"{first.name}+{second.name}")
        if ei[STATUS] != OK:
            raise OutOfRoomError(int(ei[STATUS]))
        L = self.caps.size
        outs = []
        for k, plan in enumerate((first, second)):
            d = drvs[k]
            outs.append(
                PhaseOutcome(
                    plan.name,
                    d[1].copy(),
                    d[2].copy(),
                    by_phase[k * L : (k + 1) * L].copy(),
                    int(d[20][P_INFO]),
                )
            )
        phase_of = eng[19][first_flow : ei[N_FLOWS]].copy()
        return outs[0], outs[1], phase_of

    def pair_arguments(
        self,
        first: PhasePlan,
        second: PhasePlan,
        ready_us: np.ndarray,
        mode: int,
        delay_us: np.ndarray | None,
    ) -> tuple[
        tuple[tuple[np.ndarray, ...], ...],
        tuple[tuple[np.ndarray, ...], ...],
        np.ndarray,
        np.ndarray,
    ]:
        """:func:`play`'s per-pair arguments: each phase's driver and plan arrays, its parameters, the
        chained delay per GPU."""
        G = self.G
        drvs = []
        plans = []
        for k, plan in enumerate((first, second)):
            infos = _flow_bound(plan, self.chunks) + 2 * G + 16
            drvs.append(_driver_arrays(G, infos, k))
            r = self.route_index[id(plan)]
            ready = ready_us if k == 0 else np.full(G, np.inf)
            plans.append(
                _plan_arrays(plan, self.routes.rid_direct[r], self.routes.rid_relay[r], ready)
            )
        pars = np.stack([self._par(first, mode), self._par(second, mode)])
        delay = np.zeros(G) if delay_us is None else np.asarray(delay_us, dtype=np.float64)
        return tuple(drvs), tuple(plans), pars, delay

    def _run(
        self,
        drvs: tuple[tuple[np.ndarray, ...], ...],
        plans: tuple[tuple[np.ndarray, ...], ...],
        pars: np.ndarray,
        delay: np.ndarray,
        name: str,
    ) -> None:
        """The compiled loop in slices of at most :data:`EVENTS_PER_CALL` events, sized to last about
        :data:`SLICE_S`, until the pair is done (or out of room), with a progress bar of the bytes
        delivered."""
        ei = self.ei
        drv_bundles = (bundles.packed(drvs[0]), bundles.packed(drvs[1]))
        plan_bundles = (bundles.packed(plans[0]), bundles.packed(plans[1]))
        budget = min(1_000, EVENTS_PER_CALL)
        total = float(plans[0][4].sum() + plans[1][4].sum())
        with tqdm(
            total=100.0,
            desc=f"simulate {name}",
            unit="%",
            disable=None if self.progress else True,
            leave=False,
            bar_format="{desc}: {percentage:3.0f}% |{bar}| {elapsed}",
        ) as bar:
            while not ei[PHASE_DONE] and ei[STATUS] == OK:
                t0, events0 = time.perf_counter(), int(ei[EVENTS])
                play(
                    self.arrays,
                    self.eng_bundle,
                    ei,
                    self.ef,
                    drv_bundles,
                    plan_bundles,
                    pars,
                    delay,
                    budget,
                    self.scr,
                )
                if ei[REGROUP_REQ]:
                    self._regroup()
                took, done = time.perf_counter() - t0, int(ei[EVENTS]) - events0
                if done and took > 0:
                    budget = int(min(max(done * SLICE_S / took, 1), EVENTS_PER_CALL))
                if total > 0:
                    got = float(drvs[0][0].sum() + drvs[1][0].sum())
                    bar.update(100.0 * min(got / total, 1.0) - bar.n)

    def _regroup(self) -> None:
        """End the event play left at a regrouping (:func:`regroup_step`). A rare path (the loop
        regroups only when classes outgrow their room, or at a cadence a test sets): no warm-up
        compiles it, so its first use compiles it here, with a message."""
        kernels.announce_rare_compile(
            regroup_step, "the phase loop's regrouping", REGROUP_COMPILE_S
        )
        regroup_step(self.arrays, self.eng_bundle, self.ei, self.ef, self.scr)

    def stats(self) -> LoopStats:
        ei, ef = self.ei, self.ef
        return LoopStats(
            int(ei[EVENTS]),
            int(ei[RECOMPUTES]),
            int(ei[N_FLOWS]),
            float(ef[WORST]),
            int(ei[REGROUPS]),
            float(ei[ACT_SUM]) / max(int(ei[EVENTS]), 1),
            int(ei[REFILLED]),
            int(ei[WHOLE_REFILLS]),
        )


def callee_arguments(
    topo: Topology, plans: Sequence[PhasePlan], chunks: int = 8
) -> dict[str, tuple[Any, tuple[Any, ...]]]:
    """:func:`play` and its largest callees, each with arguments of the types play passes (a loop over
    ``topo`` for ``plans``, not run): the warm-up compiles these callees side by side into numba's
    cache, and play's own compile then loads them. A callee whose arguments here drift from play's
    call is compiled again inside play's compile (correct, only slower); a test checks that they agree."""
    loop = _Loop(topo, plans, chunks, *room(plans, chunks), False)
    ready = np.zeros(loop.G)
    drvs, pls, pars, delay = loop.pair_arguments(plans[0], plans[1], ready, CHAIN_BARRIER, None)
    arrays, eng, ei, ef, scr = loop.arrays, loop.eng_bundle, loop.ei, loop.ef, loop.scr
    drvs = (bundles.packed(drvs[0]), bundles.packed(drvs[1]))
    pls = (bundles.packed(pls[0]), bundles.packed(pls[1]))
    s = loop.net
    ft = (s.fl_ptr, s.fl_link, s.fl_coef)
    now, ids, gpu = 0.0, np.zeros(0, dtype=np.int64), np.int64(0)
    state = (arrays, eng, ei, ef, scr, now)
    event = (ft, eng, ei, drvs[0], pls[0], pars[0], now, gpu)
    net = (s.cap, s.used, s.rate, s.changed, s.bottleneck, scr)  # refill's last arguments
    return {
        "refill": (
            kernels.refill,
            (ids, ids, 0.0, s.is_active, s.cl_ptr, s.cl_link, s.cl_coef, s.lk_ptr, s.lk_flow, *net),
        ),
        "_solve": (_solve, (*state, 0.0, ids, ids, _KEEP_OPEN)),
        "_new_classes": (_new_classes, (arrays, eng, ei, ids, ids, now)),
        "_advance_classes": (_advance_classes, (arrays, eng, ei, ids, now)),
        "_lazy_overloaded": (_lazy_overloaded, (arrays, eng, ei, ef)),
        "_compact_act": (_compact_act, (arrays, eng, ei)),
        "_rebuild_finishes": (_rebuild_finishes, (arrays, eng, ei)),
        "_finish_due": (_finish_due, state),
        "_admit": (_admit, state),
        "_network_step": (_network_step, state),
        "_start": (_start, event),
        "_relay_arrive": (_relay_arrive, (*event, now)),
        "_on_sent": (_on_sent, event),
        "_on_delivered": (_on_delivered, event),
        "_do_action": (_do_action, event[:-1]),
        "play": (play, (arrays, eng, ei, ef, drvs, pls, pars, delay, 1, scr)),
    }


def room(plans: Sequence[PhasePlan], chunks: int) -> tuple[int, int]:
    """(flows, classes) a run of ``plans`` needs: every arrival forms at most one class, so without
    regroupings the flows bound the classes; with them, classes that outgrow their room force a
    regrouping (which compacts them)."""
    flows = sum(_flow_bound(p, chunks) for p in plans) + 16
    return flows, flows + 16


def play_phases(
    topo: Topology,
    plans: Sequence[PhasePlan],
    *,
    chunks: int = 8,
    ready_us: np.ndarray | None = None,
    progress: bool = False,
    finish_window: float | None = None,
) -> tuple[list[PhaseOutcome], LoopStats]:
    """Play a dispatch and a combine (``plans``, two ``PhasePlan``) on one fluid network over ``topo``:
    the first with every GPU starting at ``ready_us`` (default 0), the second once the first has landed
    everywhere (as ``simulate_uniform`` does). Returns each phase's outcome and the network's counters.
    ``progress``: a bar on stderr (share of the bytes delivered; shown on a terminal).
    ``finish_window``: finishes within this share of the simulated time batch into one event (see
    :data:`FINISH_WINDOW`); None (the default) is the exact simulation.
    """
    kernels.announce_compile(play)
    if len(plans) != 2:
        raise ValueError("play_phases plays a pair of phases")
    G = topo.cluster.num_gpus
    ready = np.zeros(G) if ready_us is None else np.asarray(ready_us, dtype=np.float64)
    flows, classes = room(plans, chunks)
    while True:
        loop = _Loop(topo, plans, chunks, flows, classes, progress, finish_window)
        try:
            first, second, _ = loop.play_pair(plans[0], plans[1], ready, mode=CHAIN_BARRIER)
        except OutOfRoomError as exc:  # only if a bound above is wrong: again with twice the room
            if exc.status == OUT_OF_FLOWS:
                flows *= 2
            classes *= 2
            continue
        return [first, second], loop.stats()
