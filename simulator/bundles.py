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
The arrays are shared, not copied: what a kernel writes into a field is what Python sees in its tuple
(an array replaced in the tuple needs a new bundle).
A bundle is indexed like the tuple it came from (``eng[21]``, a constant index) as well as by name, so
kernels written for tuples read it unchanged. Packing and indexing are lowered in place (numba intrinsics
and a lowering of ``getitem``), not compiled as functions: numba compiles a function for every overload,
bundle type and position (~0.06-0.2 s each, a hundred of them).
Compiling a kernel needs only a bundle's numba type: within :func:`types_only` packing returns that type
alone (:class:`TypeOnly`), so the warm-up compiles kernels without compiling a packer first.
"""

from __future__ import annotations

import contextlib
import operator
from collections.abc import Iterator
from typing import Any

try:
    from numba import config as numba_config
    from numba import njit, types
    from numba.core import cgutils
    from numba.core.imputils import lower_builtin
    from numba.core.typing.templates import AbstractTemplate, infer_global, signature
    from numba.experimental import structref
    from numba.experimental.jitclass.base import imp_dtor
    from numba.extending import intrinsic

    HAVE_NUMBA = not getattr(numba_config, "DISABLE_JIT", False)  # NUMBA_DISABLE_JIT=1: Python
except ImportError:  # pragma: no cover - exercised only without numba
    HAVE_NUMBA = False


# A bundle as kernels take it (their annotations): a structref, or the tuple itself without numba.
Packed = Any

# compiled code's entry points (numba intrinsics and a cached packer; plain functions without numba)
pack: Any
pack_tuple: Any
packed: Any
type_of: Any


def positional(count: int) -> list[str]:
    """Field names of a bundle read by position."""
    return [f"a{i}" for i in range(count)]


if HAVE_NUMBA:

    @structref.register
    class ArrayBundle(types.StructRef):
        """The numba type of a bundle: one field per array, in the tuple's order."""

        def preprocess_fields(self, fields: Any) -> tuple[tuple[str, types.Type], ...]:
            return tuple((name, types.unliteral(typ)) for name, typ in fields)

    class Bundle(structref.StructRefProxy):
        """A bundle as Python holds it (made by a packer, handed back to kernels)."""

    structref.define_boxing(ArrayBundle, Bundle)

    def _fill(context: Any, builder: Any, bundle_type: Any, arrays_type: Any, arrays: Any) -> Any:
        """A new record (as ``structref.new``) holding the tuple's arrays, each counted once more."""
        data_type = bundle_type.get_data_type()
        alloc_type = context.data_model_manager[data_type].get_value_type()
        meminfo = context.nrt.meminfo_alloc_dtor(
            builder,
            context.get_constant(types.uintp, context.get_abi_sizeof(alloc_type)),
            imp_dtor(context, builder.module, bundle_type),
        )
        pointer = builder.bitcast(
            context.nrt.meminfo_data(builder, meminfo), alloc_type.as_pointer()
        )
        builder.store(cgutils.get_null_value(alloc_type), pointer)
        record = cgutils.create_struct_proxy(data_type)(context, builder, ref=pointer)
        for i, (field, typ) in enumerate(
            zip(bundle_type.field_dict, arrays_type.types, strict=True)
        ):
            value = builder.extract_value(arrays, i)
            context.nrt.incref(builder, typ, value)
            setattr(record, field, value)
        bundle = context.make_helper(builder, bundle_type)
        bundle.meminfo = meminfo
        return bundle._getvalue()

    def _bundle_type(arrays: Any, fields: list[str]) -> Any:
        """The bundle type of a tuple type, one named field per element."""
        if len(fields) != len(arrays.types):
            raise TypeError(f"pack: {len(fields)} names for {len(arrays.types)} arrays")
        return ArrayBundle(list(zip(fields, arrays.types, strict=True)))

    @intrinsic(prefer_literal=True)
    def _pack(typingctx: Any, arrays: Any, names: Any) -> Any:
        """A bundle of ``arrays`` with fields named by ``names`` (space-separated, a constant)."""
        if not isinstance(arrays, types.BaseTuple) or not isinstance(names, types.StringLiteral):
            return None
        bundle_type = _bundle_type(arrays, names.literal_value.split())

        def codegen(context: Any, builder: Any, sig: Any, args: Any) -> Any:
            return _fill(context, builder, bundle_type, sig.args[0], args[0])

        return bundle_type(arrays, names), codegen

    @intrinsic
    def _pack_tuple(typingctx: Any, arrays: Any) -> Any:
        """A bundle of ``arrays`` read by position (fields ``a0``, ``a1``, ...)."""
        if not isinstance(arrays, types.BaseTuple):
            return None
        bundle_type = _bundle_type(arrays, positional(len(arrays)))

        def codegen(context: Any, builder: Any, sig: Any, args: Any) -> Any:
            return _fill(context, builder, bundle_type, sig.args[0], args[0])

        return bundle_type(arrays), codegen

    @infer_global(operator.getitem)
    class _Position(AbstractTemplate):
        """``bundle[i]`` for a constant ``i``: the type of its ``i``-th field."""

        def generic(self, args: Any, kws: Any) -> Any:
            bundle, index = args
            if isinstance(bundle, ArrayBundle) and isinstance(index, types.IntegerLiteral):
                fields = list(bundle.field_dict.values())
                return signature(fields[index.literal_value], bundle, index)
            return None

    @lower_builtin(operator.getitem, ArrayBundle, types.IntegerLiteral)
    def _field_at(context: Any, builder: Any, sig: Any, args: Any) -> Any:
        """A load from the record, in place."""
        bundle, index = sig.args
        field = list(bundle.field_dict)[index.literal_value]
        read = context.get_getattr(bundle, field)  # structref's own lowering of ``bundle.field``
        return read(context, builder, bundle, args[0], field)

    # cached machine code; no cfunc wrapper (nothing takes a packer's address), as the kernels
    _OPTIONS: dict[str, Any] = {"cache": True, "no_cfunc_wrapper": True}

    pack, pack_tuple = _pack, _pack_tuple

    @njit(**_OPTIONS)
    def _packed(arrays: tuple[Any, ...]) -> Any:
        """:func:`pack_tuple` from Python: a bundle (shared arrays) to hand to kernels."""
        return pack_tuple(arrays)

    class TypeOnly:
        """Stands for a bundle where only its numba type matters (``numba.typeof`` reads
        ``_numba_type_``): what the warm-up compiles kernels for, with no packer compiled first."""

        def __init__(self, numba_type: Any) -> None:
            self._numba_type_ = numba_type

    def _type_of(arrays: tuple[Any, ...], names: str | None = None) -> TypeOnly:
        """The bundle :func:`pack` (``names``) or :func:`packed` (None) would make of ``arrays``, as its
        type alone."""
        from numba import typeof

        arrays_type = typeof(arrays)
        fields = names.split() if names is not None else positional(len(arrays_type.types))
        return TypeOnly(_bundle_type(arrays_type, fields))

    def _packed_or_type(arrays: tuple[Any, ...]) -> Any:
        """A bundle (shared arrays) to hand to kernels; within :func:`types_only`, its type alone."""
        if _types_only:
            return _type_of(arrays)
        return _packed(arrays)

    packed, type_of = _packed_or_type, _type_of

else:  # pragma: no cover - exercised only without numba

    def _same(arrays: tuple[Any, ...], *names: str) -> Any:
        """Without numba (kernels run as plain Python) the tuple itself, which kernels index alike."""
        return arrays

    pack = pack_tuple = packed = type_of = _same


# Set within types_only(): packing makes stand-ins of the bundles' types (TypeOnly), not bundles.
_types_only = False


@contextlib.contextmanager
def types_only() -> Iterator[None]:
    """Within: :func:`packed` (and :func:`~moe_placement.simulator.kernels.pack_net`) return the type of
    the bundle they would make. Building a packer is itself a compile (~0.15-0.45 s a bundle type, all
    argument unboxing): the warm-up's workers compile kernels for these types first, off the packers'
    way, and one entry compiles the packers once. A switch of the whole process (not per thread): for
    the warm-up's single-threaded workers and tests."""
    global _types_only
    before, _types_only = _types_only, True
    try:
        yield
    finally:
        _types_only = before


def types_only_active() -> bool:
    """Is a :func:`types_only` block running?"""
    return _types_only
