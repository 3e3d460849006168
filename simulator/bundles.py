"""Bundles of arrays that compiled kernels pass as one pointer: numba structrefs instead of tuples.

The simulator's kernels share their state as bundles of arrays (:class:`~moe_placement.simulator.kernels.
NetArrays`, the phase loop's engine, driver and plan arrays). Passed as a tuple, a bundle is passed by
value: each call unpacks every array of it (seven fields each) and reference-counts every one of them on
entry and exit. That plumbing was most of the loop's LLVM IR - a ten-line heap helper lowered to 6,311
lines - and so most of a cold compile, and about a third of the loop's run time went to the counts
(docs/simulator.md). A structref is a pointer to one reference-counted record of the same arrays: a call
passes and counts one pointer, a field is read where it is used.

:func:`pack` turns a tuple of arrays into a bundle whose fields carry the given names (the names are a
compile-time constant), in compiled code or from Python through the packers below (compiled once, cached).
The arrays are shared, not copied: what a kernel writes into a field is what Python sees in its tuple.
A bundle is indexed like the tuple it came from (``eng[21]``, a constant index) as well as by name, so
kernels written for tuples read it unchanged.
"""

from __future__ import annotations

import operator
from typing import Any

try:
    from numba import njit, types
    from numba.experimental import structref
    from numba.extending import overload

    HAVE_NUMBA = True
except ImportError:  # pragma: no cover - exercised only without numba
    HAVE_NUMBA = False


def pack(arrays: tuple[Any, ...], names: str) -> Any:
    """A bundle of ``arrays`` with fields named by ``names`` (space-separated, a constant), in compiled
    code. Without numba (kernels run as plain Python) the tuple itself, which kernels index alike."""
    return arrays


def pack_tuple(arrays: tuple[Any, ...]) -> Any:
    """A bundle of ``arrays`` read by position (fields ``a0``, ``a1``, ...), in compiled code; without
    numba the tuple itself."""
    return arrays


def positional(count: int) -> list[str]:
    """Field names of a bundle read by position."""
    return [f"a{i}" for i in range(count)]


def _compiled(source: str, name: str, **scope: Any) -> Any:
    """The function ``name`` defined by ``source``: generated per bundle type, from field names and
    indices only, as numba's own overloads of tuples are."""
    namespace: dict[str, Any] = {}
    exec(source, scope, namespace)
    return namespace[name]


if HAVE_NUMBA:

    @structref.register
    class ArrayBundle(types.StructRef):
        """The numba type of a bundle: one field per array, in the tuple's order."""

        def preprocess_fields(self, fields: Any) -> tuple[tuple[str, types.Type], ...]:
            return tuple((name, types.unliteral(typ)) for name, typ in fields)

    class Bundle(structref.StructRefProxy):
        """A bundle as Python holds it (made by a packer, handed back to kernels)."""

    structref.define_boxing(ArrayBundle, Bundle)

    def _packer(arrays: Any, fields: list[str], params: str) -> Any:
        """The compiled body of a packer for a tuple type and field names (``params``: the overloaded
        function's parameters, which numba matches)."""
        if len(fields) != len(arrays.types):
            raise TypeError(f"pack: {len(fields)} names for {len(arrays.types)} arrays")
        bundle_type = ArrayBundle(list(zip(fields, arrays.types, strict=True)))
        fill = "".join(f"    b.{field} = arrays[{i}]\n" for i, field in enumerate(fields))
        source = f"def impl({params}):\n    b = new(bundle_type)\n{fill}    return b\n"
        return _compiled(source, "impl", new=structref.new, bundle_type=bundle_type)

    @overload(pack, prefer_literal=True)
    def _pack(arrays, names):  # type: ignore[no-untyped-def]  # numba matches the names, unannotated
        if isinstance(arrays, types.BaseTuple) and isinstance(names, types.StringLiteral):
            return _packer(arrays, names.literal_value.split(), "arrays, names")
        return None

    @overload(pack_tuple)
    def _pack_tuple(arrays):  # type: ignore[no-untyped-def]  # numba matches the names, unannotated
        if isinstance(arrays, types.BaseTuple):
            count = len(arrays)  # its element types
            return _packer(arrays, positional(count), "arrays")
        return None

    @overload(operator.getitem, prefer_literal=True)
    def _getitem(bundle, index):  # type: ignore[no-untyped-def]  # numba matches the names, unannotated
        """``bundle[i]`` for a constant ``i``: its ``i``-th field, as the tuple it was packed from."""
        if not isinstance(bundle, ArrayBundle) or not isinstance(index, types.IntegerLiteral):
            return None
        field = list(bundle.field_dict)[index.literal_value]
        return _compiled(f"def impl(bundle, index):\n    return bundle.{field}\n", "impl")

    # cached machine code; no cfunc wrapper (nothing takes a packer's address), as the kernels
    _OPTIONS: dict[str, Any] = {"cache": True, "no_cfunc_wrapper": True}

    @njit(**_OPTIONS)
    def packed(arrays: tuple[Any, ...]) -> Any:
        """:func:`pack_tuple` from Python: a bundle (shared arrays) to hand to kernels."""
        return pack_tuple(arrays)

else:  # pragma: no cover - exercised only without numba

    def packed(arrays: tuple[Any, ...]) -> Any:
        """Without numba the tuple itself."""
        return arrays
