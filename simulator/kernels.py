"""Compiled kernels of the fluid network (:mod:`moe_placement.simulator.engine`) and the one bundle they share.

Every array the kernels read or write lives in one :class:`NetArrays` bundle: links, flows (each with its
*binding* links in a CSR), classes of flows that share a max-min rate (their solver links, lazy links and
members), and the link -> active classes index. Kernels take the bundle as one numba structref
(:func:`pack_net`, :mod:`~moe_placement.simulator.bundles`): a call passes one pointer, where a tuple
passed, unpacked and reference-counted each of its 31 arrays (most of the cold compile and a third of the
phase loop's time). They read it by name through :func:`_view` (which also names a plain tuple); inline
helpers take the view itself.

The rate computation is progressive filling (max-min fairness) with a heap of link levels, written once
(:func:`progressive_fill`) and used by the local refill after events (:func:`refill`) and by the full
recomputation (:func:`full_refill`, the engine's reference mode).

All kernels are ``njit(cache=True)`` when numba is present (machine code cached on disk) and plain Python
otherwise. Deterministic: ties are broken by class id and link id.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np

from moe_placement.simulator import bundles
from moe_placement.simulator.bundles import Packed


def _plain(*args: Any, **kwargs: Any) -> Any:
    """Stand-in for ``numba.njit`` when numba is absent: the kernels run as plain Python (slow)."""
    if args and callable(args[0]):
        return args[0]
    return lambda fn: fn


try:  # compiled kernels when numba is present
    from numba import config as numba_config
    from numba import njit
    from numba.extending import overload

    # NUMBA_DISABLE_JIT=1: numba is there but runs every kernel as Python, which its intrinsics cannot
    HAVE_NUMBA = not getattr(numba_config, "DISABLE_JIT", False)
except ImportError:  # pragma: no cover - exercised only without numba
    njit = _plain
    HAVE_NUMBA = False


def _njit(*args: Any, **kwargs: Any) -> Any:
    """``numba.njit`` without the cfunc wrapper (made for passing a kernel as a first-class function
    value, which nothing here does): about 0.1-0.2 s less compile per kernel, the same machine code."""
    kwargs.setdefault("no_cfunc_wrapper", True)
    return njit(*args, **kwargs)


def _njit_inner(fn: Any) -> Any:
    """``_njit(cache=True)`` for a kernel only other kernels call: no CPython wrapper either (the
    unboxing of every argument, up to ~0.5 s of compile for a kernel that takes a bundle), so Python
    cannot call it."""
    return _njit(cache=True, no_cpython_wrapper=True)(fn)


# Cold compile of every kernel `placement simulate` uses, measured on the shared 2-CPU machine with the
# parallel warm-up (docs/simulator.md, Compilation, session 10: 14-17 s, as loaded as the machine was;
# computed from its entries, about 13 s with three CPUs or more): wall seconds.
COLD_COMPILE_S = 16

# Set in the environment of the warm-up's worker processes (moe_placement.simulator.warmup): they compile
# quietly and start no workers of their own.
WARMUP_WORKER_ENV = "MOE_PLACEMENT_WARMUP_WORKER"

_announced = False
_checked_stale = False


def _cache_is_cold(dispatcher: Any) -> bool:
    """Does numba hold no valid on-disk machine code for ``dispatcher`` (missing, or stale against the
    source)? Reads numba's cache index; a numba without that internal API counts as warm (no message)."""
    try:
        return not dispatcher._cache._cache_file._load_index()
    except Exception:  # numba internals differ across versions: say nothing then
        return False


# The parallel compile that :func:`announce_compile` starts on a cold cache: installed by
# :mod:`moe_placement.simulator.warmup` when the package loads (this module cannot import it: the warm-up
# imports the kernels' callers, which import this module).
_parallel_compile: Callable[[], None] | None = None

# Modules whose cached kernels compile in code of another module (numba checks a cache only against the
# source of its own module, numba issue 1833): after a change to the key's source, their caches would run
# the old code. The phase loop calls this module's kernels; both compile in the bundles' intrinsics.
CALLERS_OF_KERNELS = ("phaseloop",)
DEPENDENT_CACHES: dict[str, tuple[str, ...]] = {
    "kernels": CALLERS_OF_KERNELS,
    "bundles": ("kernels", *CALLERS_OF_KERNELS),
}


def set_parallel_compile(fn: Callable[[], None] | None) -> None:
    """Install what :func:`announce_compile` runs on a cold cache (None: compile in this process)."""
    global _parallel_compile
    _parallel_compile = fn


def drop_stale_caches(
    cache_dir: Path | None = None, sources: dict[str, Path] | None = None
) -> list[str]:
    """Remove the cache index of every kernel of a module in :data:`DEPENDENT_CACHES` written before the
    last change to a source it depends on (default: numba's cache directory of the simulator, and the
    sources ``kernels.py`` and ``bundles.py`` themselves): they compile again, as on a cold cache, with
    the current code. Returns the names of the files removed; an index that cannot be removed (a
    read-only cache) stays, as numba alone would leave it."""
    here = Path(__file__).parent
    sources = sources or {name: here / f"{name}.py" for name in DEPENDENT_CACHES}
    try:
        folder = cache_dir or Path(solve._cache._cache_path)
        changed = {name: path.stat().st_mtime for name, path in sources.items()}
    except (AttributeError, OSError):  # numba internals differ, or nothing to compare
        return []
    removed = []
    for source, modules in DEPENDENT_CACHES.items():
        if source not in changed:
            continue
        for module in modules:
            for index in sorted(folder.glob(f"{module}.*.nbi")):
                try:
                    if index.stat().st_mtime < changed[source]:
                        index.unlink()
                        removed.append(index.name)
                except OSError:
                    continue
    return removed


def announce_compile(*dispatchers: Any) -> None:
    """Once per process, when any of ``dispatchers`` (numba entry kernels) has no cached machine code: say
    so on stderr, then run the parallel compile (:func:`moe_placement.simulator.warmup.warm_up`, one worker
    per CPU, which write numba's cache; the calling code then loads it). What a worker could not compile
    compiles here at first call, as without the warm-up. numba caches next to the sources, or in the
    user's cache directory when that is not writable (``NUMBA_CACHE_DIR`` overrides both). Kernels of
    other modules compiled before the last change to code they compile in count as cold (:func:`drop_stale_caches`)."""
    global _announced, _checked_stale
    if _announced or not HAVE_NUMBA or os.environ.get(WARMUP_WORKER_ENV):
        return
    if not _checked_stale:
        _checked_stale = True
        drop_stale_caches()
    if any(_cache_is_cold(d) for d in dispatchers):
        _announced = True
        print(
            f"compiling simulator kernels (once, ~{COLD_COMPILE_S} s)...",
            file=sys.stderr,
            flush=True,
        )
        if _parallel_compile is not None:
            _parallel_compile()


def announce_rare_compile(dispatcher: Any, what: str, seconds: float) -> None:
    """Before the first call of a kernel of a rare path, which no warm-up compiles (the phase loop's
    regrouping): say on stderr that it compiles now, when it has no cached machine code. Asked once
    per kernel and process (its first call compiles or loads it)."""
    if dispatcher in _rare_seen:
        return
    _rare_seen.append(dispatcher)
    if HAVE_NUMBA and not os.environ.get(WARMUP_WORKER_ENV) and _cache_is_cold(dispatcher):
        print(f"compiling {what} (once, ~{seconds:.0f} s)...", file=sys.stderr, flush=True)


_rare_seen: list[Any] = []  # the kernels announce_rare_compile was asked about in this process


# A link at or above this share of its capacity counts as saturated (float tolerance of the filling).
SATURATED = 1.0 - 1e-9

# Solver links loaded below this fraction of their capacity leave the solver at a regrouping (lazy).
# Any value is exact (a lazy link that would overload rejoins); a clear margin keeps links whose load
# is about to grow back (NVLink while intra-node flows drain) from flapping in and out.
LAZY_BELOW = 0.9


class NetArrays(NamedTuple):
    """Every array of the fluid network's state that a kernel touches.

    Links ``[links]``; flows ``[flows]`` (id = arrival order) with flow ``f`` crossing binding links
    ``fl_link[fl_ptr[f]:fl_ptr[f + 1]]``; classes ``[classes]``: class ``c`` stands for its members
    ``cm_flow[c_head[c]:c_end[c]]`` (ordered by finish target), its solver links ``cl_link[cl_ptr[c]:...]``
    and its members' lazy links ``cz_link[cz_ptr[c]:...]``. Rates in bytes/us, times in us.
    """

    cap: np.ndarray  # [links] capacity
    used: np.ndarray  # [links] load of the active classes on solver links
    lazy: np.ndarray  # [links] bool: out of the solver (unsaturated), load tracked in lazy_used
    lazy_used: np.ndarray  # [links] load of the active flows on lazy links
    fl_ptr: np.ndarray  # [flows + 1]
    fl_link: np.ndarray
    fl_coef: np.ndarray  # share of the flow on the link (1, or 1/n when sprayed over n paths)
    target: np.ndarray  # [flows] bytes a member must move in its class to finish
    cls: np.ndarray  # [flows] class of each flow
    cl_ptr: np.ndarray  # [classes + 1]
    cl_link: np.ndarray
    cl_unit: np.ndarray  # one member's coefficient
    cl_coef: np.ndarray  # times the members left
    cz_ptr: np.ndarray  # [classes + 1]
    cz_link: np.ndarray
    cz_coef: np.ndarray  # summed over the members left
    cm_flow: np.ndarray  # members of all classes, by class then finish target
    c_head: np.ndarray  # [classes] first member still active
    c_end: np.ndarray
    is_active: np.ndarray  # [classes] bool
    bottleneck: np.ndarray  # [classes] a saturated link on which no class is faster (verified)
    rate: np.ndarray  # [classes] each member's max-min rate
    old_rate: np.ndarray  # the rate ``prog`` advances at since ``t_upd``
    lazy_rate: np.ndarray  # the rate ``lazy_used`` holds for the class
    changed: np.ndarray  # int8: rate changed since the last advance
    prog: np.ndarray  # bytes each member moved since the class formed, as of t_upd
    t_upd: np.ndarray
    next_target: np.ndarray  # prog at which the next member finishes
    finish: np.ndarray  # time the next member finishes
    lk_ptr: np.ndarray  # [links + 1] link -> active classes index (see link_index)
    lk_flow: np.ndarray


def scratch(num_classes: int, num_links: int) -> Any:
    """The filling's scratch for ``num_classes`` classes and ``num_links`` links, all zero (zero again
    after every call: a call resets only what it touched, so it costs what its members touch, not the
    size of the network). A bundle of its own (read by position), handed only to what fills: :func:`solve`,
    :func:`solve_full`, the phase loop's solver. Order:
    in_set, frozen, members, before (per class); unfrozen coefficient, unfrozen count, version, seen,
    mark, seen list, touched list, stamp, visit, max rate (per link); the refill's round counter; the
    filling's slot of each link it sees and the key of its heap entry (per link, written before they are
    read)."""
    c, n = num_classes, num_links
    return bundles.packed(
        (
            np.zeros(c, dtype=np.bool_),
            np.zeros(c, dtype=np.bool_),
            np.zeros(c, dtype=np.int64),
            np.zeros(c),
            np.zeros(n),
            np.zeros(n, dtype=np.int64),
            np.zeros(n, dtype=np.int64),
            np.zeros(n, dtype=np.bool_),
            np.zeros(n, dtype=np.bool_),
            np.zeros(n, dtype=np.int64),
            np.zeros(n, dtype=np.int64),
            np.zeros(n, dtype=np.int64),
            np.zeros(n, dtype=np.int64),
            np.zeros(n),
            np.zeros(1, dtype=np.int64),
            np.zeros(n, dtype=np.int64),
            np.zeros(n),
        )
    )


# the field names of the bundle as kernels receive it (a structref, see pack_net)
NET_FIELDS = " ".join(NetArrays._fields)


@_njit(cache=True)
def _pack_net(arrays: tuple[np.ndarray, ...]) -> Packed:
    """:func:`pack_net`, compiled."""
    return bundles.pack(arrays, NET_FIELDS)


def pack_net(arrays: tuple[np.ndarray, ...]) -> Packed:
    """The bundle as kernels take it: its arrays (shared, not copied) in one structref, passed as a
    pointer (:mod:`~moe_placement.simulator.bundles`); without numba the tuple itself (:func:`_view`
    names it); within :func:`bundles.types_only`, the bundle's type alone."""
    if bundles.types_only_active():
        return bundles.type_of(arrays, NET_FIELDS)
    return _pack_net(arrays)


def _view(arrays: Any) -> NetArrays:
    """The bundle by name: the structref itself, or the named view of a plain tuple (free once
    compiled)."""
    return arrays if isinstance(arrays, NetArrays) else NetArrays(*arrays)


if HAVE_NUMBA:

    @overload(_view)
    def _view_compiled(arrays):  # type: ignore[no-untyped-def]  # numba matches the names
        if isinstance(arrays, bundles.ArrayBundle):
            return lambda arrays: arrays
        return lambda arrays: NetArrays(*arrays)


@_njit(cache=True)
def link_index(
    act: np.ndarray, fl_ptr: np.ndarray, fl_link: np.ndarray, num_links: int
) -> tuple[np.ndarray, np.ndarray]:
    """Link -> entries CSR ``(lk_ptr[links + 1], lk_flow[nnz])`` of the entries ``act`` of the CSR
    ``(fl_ptr, fl_link)``, in ``act`` order per link."""
    counts = filled(np.empty(num_links + 1, dtype=np.int64), 0)
    for f in act:
        for j in range(fl_ptr[f], fl_ptr[f + 1]):
            counts[fl_link[j] + 1] += 1
    # a running sum in place (numba's np.cumsum is a compile of its own)
    for i in range(1, num_links + 1):
        counts[i] += counts[i - 1]
    lk_ptr = counts
    fill = lk_ptr[:-1].copy()
    lk_flow = np.empty(lk_ptr[-1], dtype=np.int64)
    for f in act:
        for j in range(fl_ptr[f], fl_ptr[f + 1]):
            m = fl_link[j]
            lk_flow[fill[m]] = f
            fill[m] += 1
    return lk_ptr, lk_flow


# -- progressive filling ----------------------------------------------------------------------------
# The filling's heap of link levels: entries (level, link, version) in three arrays, ordered as tuples
# are (level, then link id, then version: a total order, so the pops are those of ``heapq`` on tuples).
# Written by hand: ``heapq`` on a list of tuples cost about a second of every cold compile.
@_njit_inner
def _before(
    level_a: float, link_a: int, ver_a: int, level_b: float, link_b: int, ver_b: int
) -> bool:
    """Does entry a come before entry b: ``(level_a, link_a, ver_a) < (level_b, link_b, ver_b)``?"""
    if level_a != level_b:
        return level_a < level_b
    if link_a != link_b:
        return link_a < link_b
    return ver_a < ver_b


@_njit_inner
def _heap_push(
    h_level: np.ndarray,
    h_link: np.ndarray,
    h_ver: np.ndarray,
    n: int,
    level: float,
    link: int,
    ver: int,
) -> int:
    """Push an entry on the heap of ``n`` entries (room assumed); returns the new size."""
    i = n
    while i > 0:
        up = (i - 1) >> 1
        if not _before(level, link, ver, h_level[up], h_link[up], h_ver[up]):
            break
        h_level[i], h_link[i], h_ver[i] = h_level[up], h_link[up], h_ver[up]
        i = up
    h_level[i], h_link[i], h_ver[i] = level, link, ver
    return n + 1


@_njit_inner
def _heap_pop(h_level: np.ndarray, h_link: np.ndarray, h_ver: np.ndarray, n: int) -> int:
    """Drop the first entry (index 0, read by the caller) of the heap of ``n > 0`` entries; returns the
    new size."""
    n -= 1
    if n > 0:
        _sift_down(h_level, h_link, h_ver, n, 0, h_level[n], h_link[n], h_ver[n])
    return n


@_njit_inner
def _sift_down(
    h_level: np.ndarray,
    h_link: np.ndarray,
    h_ver: np.ndarray,
    n: int,
    i: int,
    level: float,
    link: int,
    ver: int,
) -> None:
    """Put the entry ``(level, link, ver)`` into the hole at ``i`` of the heap of ``n`` entries, moving
    it down past every child that comes before it."""
    while True:
        c = 2 * i + 1
        if c >= n:
            break
        if c + 1 < n and _before(
            h_level[c + 1], h_link[c + 1], h_ver[c + 1], h_level[c], h_link[c], h_ver[c]
        ):
            c += 1
        if not _before(h_level[c], h_link[c], h_ver[c], level, link, ver):
            break
        h_level[i], h_link[i], h_ver[i] = h_level[c], h_link[c], h_ver[c]
        i = c
    h_level[i], h_link[i], h_ver[i] = level, link, ver


@_njit_inner
def heapify(h_level: np.ndarray, h_link: np.ndarray, h_ver: np.ndarray, n: int) -> None:
    """Make the first ``n`` entries a heap in place, bottom up: O(n), where ``n`` pushes cost
    O(n log n). The entries' order (a total order: level, then link, then version) decides every pop,
    so a heap built either way pops the same entries in the same order."""
    for i in range(n // 2 - 1, -1, -1):
        _sift_down(h_level, h_link, h_ver, n, i, h_level[i], h_link[i], h_ver[i])


@_njit(cache=True, inline="always")
def ints_from(first: int, count: int) -> np.ndarray:
    """``np.arange(first, first + count)``: numba's own costs 0.25-0.45 s of a cold compile in every
    process that compiles it (this one is inlined where it is called)."""
    out = np.empty(count, dtype=np.int64)
    for i in range(count):
        out[i] = first + i
    return out


@_njit(cache=True, inline="always")
def filled(values: np.ndarray, value: Any) -> np.ndarray:
    """``values`` with every element set to ``value``, as ``np.zeros`` (np.empty + this) without
    compiling numba's ``np.zeros`` and its fill for each dtype (0.2-0.3 s each of a cold compile)."""
    for i in range(values.shape[0]):
        values[i] = value
    return values


@_njit_inner
def concat_ints(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """``np.concatenate((a, b))`` of two int64 vectors: numba's own costs ~2 s of a cold compile in
    every process whose first compile uses it."""
    n = a.shape[0]
    out = np.empty(n + b.shape[0], dtype=np.int64)
    for i in range(n):  # loops: numba's slice assignment compiles a generic broadcast of its own
        out[i] = a[i]
    for i in range(b.shape[0]):
        out[n + i] = b[i]
    return out


SORT_RUN = 16  # sort_ints: length of the runs sorted by insertion before merging


@_njit_inner
def sort_ints(values: np.ndarray) -> np.ndarray:
    """``values`` sorted ascending, by a merge sort: numba's ``np.sort`` costs more than a second of a
    cold compile, again in every caller it is linked into (the phase loop's :func:`_sort_members` is the
    same sort on a composite key). Runs of ``SORT_RUN`` are sorted by insertion first: the sets sorted
    per event are a few hundred classes, where merging from single elements would cost more than numpy's
    quicksort. Already in order (a whole refill's active set, ids ascending): one pass."""
    n = values.shape[0]
    a = values.copy()
    ordered = True
    for i in range(1, n):
        if a[i] < a[i - 1]:
            ordered = False
            break
    if ordered:
        return a
    for lo in range(0, n, SORT_RUN):
        for i in range(lo + 1, min(lo + SORT_RUN, n)):
            v = a[i]
            j = i - 1
            while j >= lo and a[j] > v:
                a[j + 1] = a[j]
                j -= 1
            a[j + 1] = v
    tmp = np.empty(n, dtype=np.int64)
    width = SORT_RUN
    while width < n:
        lo = 0
        while lo < n:
            mid = min(lo + width, n)
            hi = min(lo + 2 * width, n)
            i, j, k = lo, mid, lo
            while i < mid and j < hi:
                if a[j] < a[i]:
                    tmp[k] = a[j]
                    j += 1
                else:
                    tmp[k] = a[i]
                    i += 1
                k += 1
            while i < mid:
                tmp[k] = a[i]
                i += 1
                k += 1
            while j < hi:
                tmp[k] = a[j]
                j += 1
                k += 1
            lo = hi
        a, tmp = tmp, a
        width *= 2
    return a


@_njit_inner
def progressive_fill(
    members: np.ndarray,
    fl_ptr: np.ndarray,
    fl_link: np.ndarray,
    fl_coef: np.ndarray,
    cap: np.ndarray,
    used: np.ndarray,
    rate: np.ndarray,
    changed: np.ndarray,
    bottleneck: np.ndarray,
    scr: Packed,
) -> None:
    """Max-min fair rates of the classes ``members`` (distinct) by progressive filling on
    the capacity the other classes leave, in place in ``rate``: ``used`` excludes the members on entry
    and includes them on exit; ``changed[c]`` is set where a rate changed and ``bottleneck[c]`` to the
    link that froze it. ``fl_*``: the classes' solver links CSR.

    Every unfrozen class rises together; the link that saturates first (lowest level, ties by link id)
    freezes the unfrozen classes on it; one heap entry per link whose level moved. The one filling:
    :func:`refill` and :func:`full_refill` both call it."""
    # scratch (``scr``, see :func:`scratch`): zero on entry, zero again on exit (only what this call
    # touched is reset), so a call costs what its members touch, not the size of the network
    frozen, unfrozen_coef, unfrozen_cnt, version = scr[1], scr[4], scr[5], scr[6]
    links_seen, mark, seen, touched = scr[7], scr[8], scr[9], scr[10]
    nseen = 0
    pushes = 0  # bound on the heap entries: one per seen link, one per member link at its freeze
    for f in members:
        pushes += fl_ptr[f + 1] - fl_ptr[f]
        for j in range(fl_ptr[f], fl_ptr[f + 1]):
            m = fl_link[j]
            unfrozen_coef[m] += fl_coef[j]
            unfrozen_cnt[m] += 1
            if not links_seen[m]:
                links_seen[m] = True
                seen[nseen] = m
                nseen += 1
    # each seen link's members, by class id (the order the link index keeps, so loads add up in the
    # same order): a frozen link then costs its members, not every class on it
    slot = scr[15]
    b_lo = np.empty(nseen + 1, dtype=np.int64)
    b_lo[0] = 0
    for k in range(nseen):
        m = seen[k]
        slot[m] = k
        b_lo[k + 1] = b_lo[k] + unfrozen_cnt[m]
    b_fill = b_lo[:nseen].copy()
    b_flow = np.empty(b_lo[nseen], dtype=np.int64)
    for f in sort_ints(members):
        for j in range(fl_ptr[f], fl_ptr[f + 1]):
            k = slot[fl_link[j]]
            b_flow[b_fill[k]] = f
            b_fill[k] += 1
    # A link's level only rises as classes freeze, so its heap entry is left behind (a key at most its
    # level) and put back at its level when it reaches the top: the pops are those of a heap updated at
    # every change, at a fraction of the pushes. Where rounding makes a level fall, a new entry goes in
    # at once (the old one turns stale by version): every key stays at most its link's level.
    key = scr[16]
    room = nseen + 2 * pushes
    h_level = np.empty(room)
    h_link = np.empty(room, dtype=np.int64)
    h_ver = np.empty(room, dtype=np.int64)
    nheap = np.int64(0)  # typed, not a literal: one compiled heap helper, not one per literal
    for k in range(nseen):
        m = seen[k]
        level0 = max(cap[m] - used[m], 0.0) / unfrozen_coef[m]
        key[m] = level0
        nheap = _heap_push(h_level, h_link, h_ver, nheap, level0, m, version[m])
    remaining = members.shape[0]
    while remaining > 0 and nheap > 0:
        level, link, ver = h_level[0], h_link[0], h_ver[0]
        nheap = _heap_pop(h_level, h_link, h_ver, nheap)
        if ver != version[link] or unfrozen_cnt[link] == 0:
            continue
        now_level = max(cap[link] - used[link], 0.0) / max(unfrozen_coef[link], 1e-300)
        if now_level != level:  # risen since it went in: back at its level
            key[link] = now_level
            nheap = _heap_push(h_level, h_link, h_ver, nheap, now_level, link, ver)
            continue
        ntouched = 0
        k = slot[link]
        for j in range(b_lo[k], b_lo[k + 1]):
            f = b_flow[j]
            if frozen[f]:
                continue
            frozen[f] = True
            remaining -= 1
            if rate[f] != level:
                changed[f] = 1
                # a provisional bottleneck; the check that follows confirms or replaces it (an unchanged
                # rate keeps its verified one)
                bottleneck[f] = link
            rate[f] = level
            for i in range(fl_ptr[f], fl_ptr[f + 1]):
                m = fl_link[i]
                used[m] += fl_coef[i] * level
                unfrozen_coef[m] -= fl_coef[i]
                unfrozen_cnt[m] -= 1
                if not mark[m]:
                    mark[m] = True
                    touched[ntouched] = m
                    ntouched += 1
        for t in range(ntouched):
            m = touched[t]
            mark[m] = False
            if unfrozen_cnt[m] > 0:
                level_m = max(cap[m] - used[m], 0.0) / max(unfrozen_coef[m], 1e-300)
                if level_m < key[m]:
                    version[m] += 1
                    key[m] = level_m
                    nheap = _heap_push(h_level, h_link, h_ver, nheap, level_m, m, version[m])
    for k in range(nseen):
        m = seen[k]
        unfrozen_coef[m] = 0.0
        unfrozen_cnt[m] = 0
        links_seen[m] = False
        version[m] += 1  # entries of this call never match a later one's
    for f in members:
        frozen[f] = False


@_njit(cache=True)
def full_refill(
    act: np.ndarray,
    keep_below: float,
    fl_ptr: np.ndarray,
    fl_link: np.ndarray,
    fl_coef: np.ndarray,
    cap: np.ndarray,
    used: np.ndarray,
    rate: np.ndarray,
    changed: np.ndarray,
    bottleneck: np.ndarray,
    scr: Packed,
) -> int:
    """Refill every active class at or above ``keep_below`` from scratch (the others keep their rate);
    ``used`` is recomputed. The engine's reference mode. Returns the number of classes refilled."""
    used[:] = 0.0
    members = np.empty(act.shape[0], dtype=np.int64)
    count = 0
    for c in act:
        if rate[c] < keep_below:
            for j in range(fl_ptr[c], fl_ptr[c + 1]):
                used[fl_link[j]] += fl_coef[j] * rate[c]
        else:
            members[count] = c
            count += 1
    progressive_fill(
        members[:count],
        fl_ptr,
        fl_link,
        fl_coef,
        cap,
        used,
        rate,
        changed,
        bottleneck,
        scr,
    )
    return count


@_njit_inner
def refill(
    seed_flows: np.ndarray,
    seed_links: np.ndarray,
    keep_below: float,
    is_active: np.ndarray,
    fl_ptr: np.ndarray,
    fl_link: np.ndarray,
    fl_coef: np.ndarray,
    lk_ptr: np.ndarray,
    lk_flow: np.ndarray,
    cap: np.ndarray,
    used: np.ndarray,
    rate: np.ndarray,
    changed: np.ndarray,
    bottleneck: np.ndarray,
    scr: Packed,
) -> tuple[int, int]:
    """Exact local recomputation of the max-min fair rates after flows arrived or finished.

    Start from the new flows and the flows bounded by (``bottleneck``) the saturated links that finished
    flows left (``seed_links``; only flows at or above ``keep_below`` can change at all);
    refill that set on the capacity the others leave, then check the max-min condition (every flow has
    a saturated link on which no flow is faster) for every flow sharing a link with the set. Flows that
    fail join the set and it is refilled, until all pass: the result is then *the* max-min fair
    allocation (Bertsekas and Gallager, Data Networks, 6.5.2), found without touching the rest.
    ``used[link]`` (load of the active flows) is kept up to date. Returns (flows refilled, rounds).
    """
    # scratch (see :func:`scratch`): ``in_set`` is all False on entry and again on exit; the round
    # stamps compare with a round counter that runs on across calls (``epoch``), so they need no reset
    in_set, members, before = scr[0], scr[2], scr[3]
    stamp, visit, max_rate, epoch = scr[11], scr[12], scr[13], scr[14]
    # the set, in the order classes joined it (each once: ``in_set``); arrays, not lists, compile faster
    count = 0
    for f in seed_flows:
        if not in_set[f]:
            in_set[f] = True
            members[count] = f
            count += 1
    for link in seed_links:
        for j in range(lk_ptr[link], lk_ptr[link + 1]):
            f = lk_flow[j]
            if is_active[f] and not in_set[f] and rate[f] >= keep_below and bottleneck[f] == link:
                in_set[f] = True
                members[count] = f
                count += 1
    rounds = 0
    last_count = 0
    while True:
        rounds += 1
        epoch[0] += 1
        it = epoch[0]
        arr = members[:count]  # this round's set; classes added below land after it
        for k in range(count):
            before[k] = rate[arr[k]]
        for f in arr:
            if rate[f] > 0 and np.isfinite(rate[f]):
                for j in range(fl_ptr[f], fl_ptr[f + 1]):
                    used[fl_link[j]] -= fl_coef[j] * rate[f]
        progressive_fill(
            arr,
            fl_ptr,
            fl_link,
            fl_coef,
            cap,
            used,
            rate,
            changed,
            bottleneck,
            scr,
        )
        verified = last_count  # members [0, verified) were checked in the previous round
        last_count = arr.shape[0]
        added = 0
        for k in range(arr.shape[0]):
            f = arr[k]
            if rate[f] == before[k] and k < verified:
                continue  # a member checked last round whose rate did not move changes nothing around it
            for j in range(fl_ptr[f], fl_ptr[f + 1]):
                link = fl_link[j]
                if visit[link] == it:
                    continue
                visit[link] = it
                for q in range(lk_ptr[link], lk_ptr[link + 1]):
                    g = lk_flow[q]
                    if not is_active[g]:
                        continue
                    if not in_set[g] and visit[bottleneck[g]] != it:
                        continue  # nothing moved on the link that bounds g: it still does
                    # does g have a bottleneck: a saturated link where no flow is faster than g?
                    ok = False
                    for i in range(fl_ptr[g], fl_ptr[g + 1]):
                        m = fl_link[i]
                        if used[m] < cap[m] * (1.0 - 1e-9):
                            continue
                        if stamp[m] != it:
                            stamp[m] = it
                            best = 0.0
                            for r in range(lk_ptr[m], lk_ptr[m + 1]):
                                h = lk_flow[r]
                                if is_active[h] and rate[h] > best:
                                    best = rate[h]
                            max_rate[m] = best
                        if rate[g] >= max_rate[m] * (1.0 - 1e-9):
                            ok = True
                            bottleneck[g] = m
                            break
                    if ok:
                        continue
                    if not in_set[g]:
                        in_set[g] = True
                        members[count] = g
                        count += 1
                        added += 1
                    else:
                        # a member beaten on its saturated links: the faster flows there must be refilled too
                        for i in range(fl_ptr[g], fl_ptr[g + 1]):
                            m = fl_link[i]
                            if used[m] < cap[m] * (1.0 - 1e-9):
                                continue  # an unsaturated link bounds nobody
                            for r in range(lk_ptr[m], lk_ptr[m + 1]):
                                h = lk_flow[r]
                                if is_active[h] and not in_set[h] and rate[h] > rate[g]:
                                    in_set[h] = True
                                    members[count] = h
                                    count += 1
                                    added += 1
        if added == 0:
            for k in range(count):
                in_set[members[k]] = False
            return count, rounds


# -- one event: refill, lazy links, advance ----------------------------------------------------------
@_njit_inner
def _lazy_update(
    act: np.ndarray,
    changed: np.ndarray,
    rate: np.ndarray,
    lazy_rate: np.ndarray,
    cz_ptr: np.ndarray,
    cz_link: np.ndarray,
    cz_coef: np.ndarray,
    lazy_used: np.ndarray,
) -> None:
    """Carry the classes' rate changes into the loads of the lazy links their members cross
    (``lazy_rate[c]``: the rate ``lazy_used`` holds for class ``c``; ``cz_*``: the class's lazy links,
    coefficients summed over its members)."""
    for c in act:
        if not changed[c]:
            continue  # a rate change always sets ``changed`` (cleared only by advance, after this)
        delta = rate[c] - lazy_rate[c]
        if delta == 0.0:
            continue
        lazy_rate[c] = rate[c]
        for j in range(cz_ptr[c], cz_ptr[c + 1]):
            lazy_used[cz_link[j]] += cz_coef[j] * delta


@_njit_inner
def _lazy_overload(cap: np.ndarray, lazy: np.ndarray, lazy_used: np.ndarray) -> tuple[bool, float]:
    """(is a lazy link loaded over its capacity, the highest lazy-link utilisation when none is; -1
    when there is no lazy link or one is over)."""
    worst = -1.0
    for m in range(cap.shape[0]):
        if lazy[m]:
            if lazy_used[m] > cap[m] * (1.0 + 1e-9):
                return True, -1.0
            worst = max(worst, lazy_used[m] / cap[m])
    return False, worst


@_njit_inner
def _slack(cap: np.ndarray, lazy: np.ndarray, used: np.ndarray) -> bool:
    """Is a loaded solver link below ``LAZY_BELOW`` of its capacity (worth a regrouping)?"""
    for m in range(cap.shape[0]):
        if not lazy[m] and used[m] > 0.0 and used[m] < cap[m] * LAZY_BELOW:
            return True
    return False


# What the caller knows of a regrouping before the solve (FluidNetwork._regroup_verdict): none due,
# due, due if a solver link has slack after it; KEEP_OPEN: the caller goes on itself (no advance).
NO_REGROUP, REGROUP, REGROUP_IF_SLACK, KEEP_OPEN = 0, 1, 2, -1


@_njit(cache=True, inline="always")
def _settle(
    s: NetArrays, act: np.ndarray, aggregate: bool, now: float, verdict: int
) -> tuple[float, float, float]:
    """After a fill: carry the rates into the lazy links' loads (``aggregate``), then :func:`advance`
    unless a lazy link overloads or a regrouping is due (``verdict``). Returns (the highest solver-link
    utilisation, the highest lazy-link utilisation or -1, the next finish time or NaN when the caller
    must go on: regroup, then advance)."""
    cap, used, rate, changed = s.cap, s.used, s.rate, s.changed
    worst = 0.0
    for m in range(cap.shape[0]):
        worst = max(worst, used[m] / cap[m])
    lazy_worst = -1.0
    settle = verdict != KEEP_OPEN
    if aggregate:
        _lazy_update(act, changed, rate, s.lazy_rate, s.cz_ptr, s.cz_link, s.cz_coef, s.lazy_used)
        over, lazy_worst = _lazy_overload(cap, s.lazy, s.lazy_used)
        slack = verdict == REGROUP_IF_SLACK and _slack(cap, s.lazy, used)
        if over or verdict == REGROUP or slack:
            settle = False
    next_finish = np.nan
    if settle:
        next_finish = _advance(
            now, act, rate, changed, s.prog, s.t_upd, s.old_rate, s.next_target, s.finish
        )
    return worst, lazy_worst, next_finish


@_njit(cache=True)
def solve(
    arrays: Packed,
    act: np.ndarray,
    seed_cls: np.ndarray,
    seed_links: np.ndarray,
    keep_below: float,
    aggregate: bool,
    now: float,
    verdict: int,
    scr: Packed,
) -> tuple[int, int, float, float, float]:
    """New max-min rates of the active classes ``act`` after an event (local :func:`refill`), then
    :func:`_settle`: one call on the common path of an event instead of three.

    Returns (classes refilled, refill rounds, the highest solver-link utilisation, the highest lazy-link
    utilisation or -1, the next finish time or NaN)."""
    return solve_view(
        _view(arrays), act, seed_cls, seed_links, keep_below, aggregate, now, verdict, scr
    )


@_njit(cache=True, inline="always")
def solve_view(
    s: NetArrays,
    act: np.ndarray,
    seed_cls: np.ndarray,
    seed_links: np.ndarray,
    keep_below: float,
    aggregate: bool,
    now: float,
    verdict: int,
    scr: Packed,
) -> tuple[int, int, float, float, float]:
    """:func:`solve` on a bundle's view, inlined into its callers: the phase loop's solver then needs
    only :func:`refill` compiled before it, not :func:`solve` (one level less on the cold compile's
    longest chain)."""
    refilled, rounds = refill_view(s, seed_cls, seed_links, keep_below, scr)
    worst, lazy_worst, next_finish = _settle(s, act, aggregate, now, verdict)
    return refilled, rounds, worst, lazy_worst, next_finish


@_njit(cache=True, inline="always")
def refill_view(
    s: NetArrays,
    seed_cls: np.ndarray,
    seed_links: np.ndarray,
    keep_below: float,
    scr: Packed,
) -> tuple[int, int]:
    """:func:`refill` on the classes of a bundle's view; the set it refilled is ``scr[2][:count]``."""
    return refill(
        seed_cls,
        seed_links,
        keep_below,
        s.is_active,
        s.cl_ptr,
        s.cl_link,
        s.cl_coef,
        s.lk_ptr,
        s.lk_flow,
        s.cap,
        s.used,
        s.rate,
        s.changed,
        s.bottleneck,
        scr,
    )


@_njit(cache=True)
def solve_full(
    arrays: Packed,
    act: np.ndarray,
    keep_below: float,
    aggregate: bool,
    now: float,
    verdict: int,
    scr: Packed,
) -> tuple[int, int, float, float, float]:
    """:func:`solve` with :func:`full_refill` (the engine's reference mode, compiled only when used)."""
    s = _view(arrays)
    refilled = full_refill_view(s, act, keep_below, scr)
    worst, lazy_worst, next_finish = _settle(s, act, aggregate, now, verdict)
    return refilled, 1, worst, lazy_worst, next_finish


@_njit(cache=True, inline="always")
def full_refill_view(s: NetArrays, act: np.ndarray, keep_below: float, scr: Packed) -> int:
    """:func:`full_refill` on the classes of a bundle's view."""
    return full_refill(
        act,
        keep_below,
        s.cl_ptr,
        s.cl_link,
        s.cl_coef,
        s.cap,
        s.used,
        s.rate,
        s.changed,
        s.bottleneck,
        scr,
    )


@_njit(cache=True)
def advance(arrays: Packed, act: np.ndarray, now: float) -> float:
    """Bring classes whose rate changed up to date (lazily); return the earliest finish time."""
    s = _view(arrays)
    return _advance(
        now, act, s.rate, s.changed, s.prog, s.t_upd, s.old_rate, s.next_target, s.finish
    )


@_njit_inner
def _advance(
    now: float,
    act: np.ndarray,
    rate: np.ndarray,
    changed: np.ndarray,
    prog: np.ndarray,
    t_upd: np.ndarray,
    old_rate: np.ndarray,
    next_target: np.ndarray,
    finish: np.ndarray,
) -> float:
    """Bring classes whose rate changed up to date (lazily); return the earliest finish time.

    ``prog[c]``: bytes each member of class ``c`` has moved since the class was formed, as of ``t_upd``;
    the class's next member finishes when ``prog`` reaches ``next_target``."""
    best = np.inf
    for c in act:
        if changed[c]:
            advance_class(c, now, rate, changed, prog, t_upd, old_rate, next_target, finish)
        if finish[c] < best:
            best = finish[c]
    return best


@_njit(cache=True, inline="always")
def advance_class(
    c: int,
    now: float,
    rate: np.ndarray,
    changed: np.ndarray,
    prog: np.ndarray,
    t_upd: np.ndarray,
    old_rate: np.ndarray,
    next_target: np.ndarray,
    finish: np.ndarray,
) -> None:
    """One class whose rate changed brought up to date (see :func:`_advance`): its progress at the old
    rate, then its next finish at the new one."""
    prog[c] += old_rate[c] * (now - t_upd[c])
    t_upd[c] = now
    old_rate[c] = rate[c]
    left = next_target[c] - prog[c]
    if left < 0.0:
        left = 0.0
    finish[c] = now + left / rate[c] if rate[c] > 0 else np.inf
    changed[c] = 0


# -- finishes, lazy links, classes ------------------------------------------------------------------
@_njit(cache=True)
def pop_finished(
    arrays: Packed, act: np.ndarray, now: float, tol: float
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, float]:
    """Finish the members of the active classes whose finish time is within ``tol`` (relative) of ``now``.

    A member leaving takes its share off the class's coefficients and its load off ``used`` (solver
    links) and ``lazy_used`` (lazy links). Returns (the classes that lost members, the finished flow ids,
    the saturated solver links they left - only there can other rates change -, the classes now empty,
    the lowest rate that finished).
    """
    s = _view(arrays)
    limit = now + tol * max(now, 1.0)
    # arrays sized by a bound and filled to a count, not lists: lists cost seconds of a cold compile
    due = np.empty(act.shape[0], dtype=np.int64)
    ndone = 0
    for i in range(act.shape[0]):
        c = act[i]
        if s.finish[c] <= limit:
            due[ndone] = c
            ndone += 1
    done_cls = due[:ndone]
    out, seeds, empty, low = finish_members(
        arrays, done_cls, now, limit, filled(np.empty(s.cap.shape[0], dtype=np.bool_), False)
    )
    return done_cls, out, seeds, empty, low


@_njit_inner
def finish_members(
    arrays: Packed,
    done_cls: np.ndarray,
    now: float,
    limit: float,
    seed_mark: np.ndarray,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, float]:
    """The work of :func:`pop_finished` on the classes due, ``done_cls`` (in the order of the active
    set): their members due by ``limit`` finish. ``seed_mark``: per link, all False (and again on
    exit). Returns (the finished flow ids, the saturated links they left, the classes now empty, the
    lowest rate that finished)."""
    s = _view(arrays)
    rate, prog, t_upd, next_target, changed = s.rate, s.prog, s.t_upd, s.next_target, s.changed
    c_head, c_end, cm_flow, target = s.c_head, s.c_end, s.cm_flow, s.target
    cl_ptr, cl_link, cl_coef, cl_unit = s.cl_ptr, s.cl_link, s.cl_coef, s.cl_unit
    fl_ptr, fl_link, fl_coef = s.fl_ptr, s.fl_link, s.fl_coef
    lazy, cap, used, lazy_used, lazy_rate = s.lazy, s.cap, s.used, s.lazy_used, s.lazy_rate
    cz_ptr, cz_link, cz_coef = s.cz_ptr, s.cz_link, s.cz_coef
    nmembers = 0  # bound on the flows finishing: all members left in the classes due
    nseeds = 0  # bound on the links they leave
    for c in done_cls:
        nmembers += c_end[c] - c_head[c]
        nseeds += cl_ptr[c + 1] - cl_ptr[c]
    out = np.empty(nmembers, dtype=np.int64)
    nout = 0
    empty = np.empty(done_cls.shape[0], dtype=np.int64)
    nempty = 0
    seeds = np.empty(nseeds, dtype=np.int64)
    nseeds = 0
    low = np.inf
    for c in done_cls:
        r = rate[c]
        p0, t0 = prog[c], t_upd[c]  # the member finish times below use the values advance used
        k = c_head[c]
        while k < c_end[c]:
            f = cm_flow[k]
            if r <= 0 or t0 + (target[f] - p0) / r > limit:
                break
            out[nout] = f
            nout += 1
            k += 1
            for i in range(fl_ptr[f], fl_ptr[f + 1]):
                m = fl_link[i]
                if lazy[m]:
                    lazy_used[m] -= fl_coef[i] * lazy_rate[c]
                    if lazy_used[m] < 0.0:
                        lazy_used[m] = 0.0
                    for z in range(cz_ptr[c], cz_ptr[c + 1]):
                        if cz_link[z] == m:
                            cz_coef[z] -= fl_coef[i]
                            break
        gone = k - c_head[c]
        if gone == 0:
            continue
        low = min(low, r)
        c_head[c] = k
        for j in range(cl_ptr[c], cl_ptr[c + 1]):
            m = cl_link[j]
            if used[m] >= cap[m] * (1.0 - 1e-9) and not seed_mark[m]:
                seed_mark[m] = True
                seeds[nseeds] = m
                nseeds += 1
            used[m] -= cl_unit[j] * gone * r
            if used[m] < 0.0:
                used[m] = 0.0
            cl_coef[j] = cl_unit[j] * (c_end[c] - k)
        prog[c] = p0 + r * (now - t0)
        t_upd[c] = now
        if k == c_end[c]:
            empty[nempty] = c
            nempty += 1
            rate[c] = 0.0
        else:
            next_target[c] = target[cm_flow[k]]
            changed[c] = 1
    for k in range(nseeds):
        seed_mark[seeds[k]] = False
    return out[:nout], seeds[:nseeds], empty[:nempty], low


@_njit_inner
def _rescue_orphans(
    flows: np.ndarray, fl_ptr: np.ndarray, fl_link: np.ndarray, lazy: np.ndarray, cap: np.ndarray
) -> bool:
    """Every flow needs a solver link: for flows whose links are all lazy, the lowest-capacity one
    rejoins the solver (in place in ``lazy``). Returns whether any did."""
    any_ = False
    for f in flows:
        orphan = True
        best = -1
        for j in range(fl_ptr[f], fl_ptr[f + 1]):
            m = fl_link[j]
            if not lazy[m]:
                orphan = False
                break
            if best < 0 or cap[m] < cap[best]:
                best = m
        if orphan and best >= 0:
            lazy[best] = False
            any_ = True
    return any_


@_njit(cache=True)
def build_classes(
    arrays: Packed,
    first_class: int,
    members: np.ndarray,
    bounds: np.ndarray,
    cm_start: int,
) -> None:
    """Classes ``first_class + i`` from ``members[bounds[i]:bounds[i + 1]]`` (already ordered by finish
    target): solver links and coefficients from the first member, times the member count."""
    s = _view(arrays)
    fl_ptr, fl_link, fl_coef, target, cls, lazy = (
        s.fl_ptr,
        s.fl_link,
        s.fl_coef,
        s.target,
        s.cls,
        s.lazy,
    )
    cl_ptr, cl_link, cl_unit, cl_coef, cm_flow = (
        s.cl_ptr,
        s.cl_link,
        s.cl_unit,
        s.cl_coef,
        s.cm_flow,
    )
    c_head, c_end, next_target = s.c_head, s.c_end, s.next_target
    cz_ptr, cz_link, cz_coef = s.cz_ptr, s.cz_link, s.cz_coef

    for i in range(bounds.shape[0] - 1):
        c = first_class + i
        lo, hi = bounds[i], bounds[i + 1]
        n = hi - lo
        first = members[lo]
        pos = cl_ptr[c]
        for j in range(fl_ptr[first], fl_ptr[first + 1]):
            m = fl_link[j]
            if lazy[m]:
                continue
            cl_link[pos] = m
            cl_unit[pos] = fl_coef[j]
            cl_coef[pos] = fl_coef[j] * n
            pos += 1
        cl_ptr[c + 1] = pos
        c_head[c] = cm_start + lo
        c_end[c] = cm_start + hi
        for k in range(lo, hi):
            cm_flow[cm_start + k] = members[k]
            cls[members[k]] = c
        next_target[c] = target[first]
        # the members' lazy links, coefficients summed per link
        z0 = cz_ptr[c]
        zpos = z0
        for k in range(lo, hi):
            f = members[k]
            for j in range(fl_ptr[f], fl_ptr[f + 1]):
                m = fl_link[j]
                if not lazy[m]:
                    continue
                found = False
                for z in range(z0, zpos):
                    if cz_link[z] == m:
                        cz_coef[z] += fl_coef[j]
                        found = True
                        break
                if not found:
                    cz_link[zpos] = m
                    cz_coef[zpos] = fl_coef[j]
                    zpos += 1
        cz_ptr[c + 1] = zpos


@_njit_inner
def _path_hash(
    f: int, fl_ptr: np.ndarray, fl_link: np.ndarray, fl_coef: np.ndarray, lazy: np.ndarray
) -> np.uint64:
    """FNV-1a style hash (uint64) of flow ``f``'s solver links (not ``lazy``) and coefficients, in order."""
    x = np.uint64(1469598103934665603)
    for j in range(fl_ptr[f], fl_ptr[f + 1]):
        m = fl_link[j]
        if lazy[m]:
            continue
        x = (x ^ np.uint64(m + 1)) * np.uint64(1099511628211)
        x = (x ^ np.uint64(np.int64(fl_coef[j] * 1e9))) * np.uint64(1099511628211)
    return x


@_njit_inner
def _same_path(
    a: int, b: int, fl_ptr: np.ndarray, fl_link: np.ndarray, fl_coef: np.ndarray, lazy: np.ndarray
) -> bool:
    """Do flows ``a`` and ``b`` cross the same solver links (not ``lazy``) with the same coefficients, in
    the same order?"""
    ja, jb = fl_ptr[a], fl_ptr[b]
    while True:
        while ja < fl_ptr[a + 1] and lazy[fl_link[ja]]:
            ja += 1
        while jb < fl_ptr[b + 1] and lazy[fl_link[jb]]:
            jb += 1
        end_a, end_b = ja >= fl_ptr[a + 1], jb >= fl_ptr[b + 1]
        if end_a or end_b:
            return end_a and end_b
        if fl_link[ja] != fl_link[jb] or fl_coef[ja] != fl_coef[jb]:
            return False
        ja += 1
        jb += 1


@_njit_inner
def _group(
    flows: np.ndarray,
    fl_ptr: np.ndarray,
    fl_link: np.ndarray,
    fl_coef: np.ndarray,
    lazy: np.ndarray,
) -> np.ndarray:
    """Class index (0, 1, ... in order of first appearance) of each of ``flows``: flows whose solver
    links (not ``lazy``) and coefficients are identical, in the same order, share a class.

    An open-addressing hash table of path hashes, each entry confirmed against its class's first flow
    (a collision probes on, so it is never a wrong merge). Written by hand rather than with a (stable)
    sort: sorting machinery is most of what this kernel would cost to compile."""
    n = flows.shape[0]
    size = 1
    while size < 2 * n:
        size *= 2
    mask = np.uint64(size - 1)
    slot_hash = filled(np.empty(size, dtype=np.uint64), np.uint64(0))
    slot_group = filled(np.empty(size, dtype=np.int64), 0)  # class + 1; 0: free
    first = np.empty(n, dtype=np.int64)  # each class's first flow
    group = np.empty(n, dtype=np.int64)
    ngroups = 0
    for i in range(n):
        f = flows[i]
        x = _path_hash(f, fl_ptr, fl_link, fl_coef, lazy)
        pos = np.int64(x & mask)
        while True:
            g = slot_group[pos] - 1
            if g < 0:  # a path not seen yet: a new class
                slot_hash[pos] = x
                slot_group[pos] = ngroups + 1
                first[ngroups] = f
                group[i] = ngroups
                ngroups += 1
                break
            if slot_hash[pos] == x and _same_path(first[g], f, fl_ptr, fl_link, fl_coef, lazy):
                group[i] = g
                break
            pos = (pos + 1) & (size - 1)
    return group


@_njit(cache=True)
def classify(
    arrays: Packed, flows: np.ndarray, rescue: bool, aggregate: bool
) -> tuple[bool, np.ndarray]:
    """Classes for ``flows`` (arrivals, or the active flows at a regrouping), in one call.

    With ``rescue``, flows whose links are all lazy first get one back (:func:`_rescue_orphans`); when
    any did, returns ``(True, [])`` and the caller regroups. Otherwise ``(False, class index of each
    flow)``: shared by identical solver paths (:func:`_group`) when ``aggregate``, else one class each.
    One entry kernel instead of two: each entry is a fixed cost of every cold compile."""
    s = _view(arrays)
    if rescue and _rescue_orphans(flows, s.fl_ptr, s.fl_link, s.lazy, s.cap):
        return True, np.empty(0, dtype=np.int64)
    if not aggregate:
        return False, ints_from(0, flows.shape[0])
    return False, _group(flows, s.fl_ptr, s.fl_link, s.fl_coef, s.lazy)
