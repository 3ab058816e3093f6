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


def njit(fn=None, **options):
    """Compile `fn` with Numba (cached, GIL released) unless EMU_DISABLE_JIT=1.

    Usable as `@njit` or `@njit(inline="always")`; extra options go to `numba.njit`.
    """
    if JIT_DISABLED:
        return _identity if fn is None else fn
    import numba

    decorator = numba.njit(cache=True, nogil=True, **options)
    return decorator if fn is None else decorator(fn)
