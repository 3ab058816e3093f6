"""The one JIT switch of the project.

Kernels are decorated with `njit` from this module. By default it is
`numba.njit(cache=True, nogil=True)`; with the environment variable `EMU_DISABLE_JIT=1`
(read at import time) it is a no-op decorator, so kernels run as plain Python and can be
stepped through in a debugger or checked for out-of-bounds indexing by numpy.
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
