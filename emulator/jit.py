"""The one JIT switch of the project.

Kernels are decorated with `njit` from this module. By default it is
`numba.njit(cache=True, nogil=True)`; with the environment variable `EMU_DISABLE_JIT=1`
(read at import time) it is a no-op decorator, so kernels run as plain Python and can be
stepped through in a debugger or checked for out-of-bounds indexing by numpy.
`prefetch(array, index)` is a cache hint for kernels (LLVM's `llvm.prefetch`), a no-op
without the JIT.
"""

import os

JIT_DISABLED = os.environ.get("EMU_DISABLE_JIT", "") == "1"


def _identity(fn):
    """Return `fn` unchanged (the decorator used when the JIT is disabled)."""
    return fn


def njit(fn=None, *, nrt: bool = True, **options):
    """Compile `fn` with Numba (cached, GIL released) unless EMU_DISABLE_JIT=1.

    Usable as `@njit` or `@njit(nrt=False)`. `nrt=False` is for kernels that allocate
    nothing: Numba then emits no reference counting for their array arguments (an atomic
    increment and decrement per array per call otherwise). Division follows numpy's error
    model (x / 0.0 is inf or nan, no exception), as the numpy reference code does. Other
    options go to `numba.njit`.
    """
    if JIT_DISABLED:
        return _identity if fn is None else fn
    import numba

    options.setdefault("error_model", "numpy")
    decorator = numba.njit(cache=True, nogil=True, _nrt=nrt, **options)
    return decorator if fn is None else decorator(fn)


def _no_prefetch(array, index):
    """Prefetch stand-in when the JIT is disabled: does nothing."""


def _make_prefetch():
    """`prefetch(array, index)`: a hint that `array[index]` (a 1-D or 2-D array; for 2-D,
    the start of row `index`) will be read soon, compiled to LLVM's `llvm.prefetch`
    (read, high locality). No effect on results; a no-op when the JIT is disabled."""
    if JIT_DISABLED:
        return _no_prefetch
    from llvmlite import ir
    from numba.core import cgutils, types
    from numba.extending import intrinsic

    @intrinsic
    def prefetch(typingctx, array, index):
        def codegen(context, builder, signature, args):
            array_type = signature.args[0]
            view = context.make_array(array_type)(context, builder, args[0])
            indices = [args[1]] + [context.get_constant(types.intp, 0)] * (array_type.ndim - 1)
            pointer = cgutils.get_item_pointer(context, builder, array_type, view, indices,
                                               wraparound=False)
            byte_pointer = ir.PointerType(ir.IntType(8))
            i32 = ir.IntType(32)
            function = cgutils.get_or_insert_function(
                builder.module, ir.FunctionType(ir.VoidType(), [byte_pointer, i32, i32, i32]),
                "llvm.prefetch.p0i8")
            builder.call(function, [builder.bitcast(pointer, byte_pointer), i32(0), i32(3),
                                    i32(1)])
            return context.get_dummy_value()
        return types.void(array, types.intp), codegen

    return prefetch


prefetch = _make_prefetch()
