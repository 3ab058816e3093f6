"""Run independent jobs in forked worker processes (one per CPU by default).

`fork_map(function, items, jobs)` returns `[function(item) for item in items]`. With more
than one job and more than one item, the items are handed to forked children by index
(so large numpy inputs are shared copy-on-write, never pickled) and only the results come
back pickled. Used to emulate a multi-wafer system's distinct wafer programs at once
(compiler/system.py); every job must be deterministic, so the results equal a serial
run's.

`Forked(function, *args)` runs one call in a forked child while the caller goes on (the
layer fast-forward's block check and head, emulator/mesh/fast_forward.py); `shared_empty`
makes arrays the child can fill without pickling; `usable_jobs` says how many processes a
job may use here (1 inside a pool worker or without fork).

Every child (a `Forked` one or a pool worker) starts with `child_signals`: it ignores
SIGINT (the parent, interrupted, kills it), dies silently on SIGTERM (the pool's way of
stopping workers) and is killed by the kernel when its parent dies (PR_SET_PDEATHSIG on
Linux), so an interrupted or killed `emu` leaves no orphaned process and no traceback from
a child (docs/reliability.md). Children are forked with SIGINT and SIGTERM held
(`signals_held`) and take them only once `child_signals` has run, so a signal sent to the
process group at the moment of a fork never runs the parent's handler in a child.
"""

import contextlib
import ctypes
import mmap
import multiprocessing
import os
import pickle
import signal
import sys

import numpy as np

_WORK: tuple = ()   # (function, items) while a fork_map runs; read by the children


PR_SET_PDEATHSIG = 1
HELD_SIGNALS = (signal.SIGINT, signal.SIGTERM)   # held from a fork until child_signals


@contextlib.contextmanager
def signals_held():
    """SIGINT and SIGTERM blocked in this thread (a child forked meanwhile starts with them
    blocked; `child_signals` releases them); pending ones arrive when the block ends."""
    previous = signal.pthread_sigmask(signal.SIG_BLOCK, HELD_SIGNALS)
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, previous)


def child_signals(parent: int) -> None:
    """Signal set-up of a forked child of process `parent` (see the module docstring)."""
    try:
        signal.set_wakeup_fd(-1)
    except ValueError:          # not the main thread of the child
        pass
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    if sys.platform.startswith("linux"):
        try:
            libc = ctypes.CDLL(None, use_errno=True)
            libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
        except (OSError, AttributeError):
            pass
    if os.getppid() != parent:  # the parent died before the death signal was set
        os._exit(1)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, HELD_SIGNALS)   # held since the fork


def _run_item(index: int):
    """Child side: apply the function to item `index`."""
    function, items = _WORK
    return function(items[index])


def fork_map(function, items: list, jobs: int | None = None) -> list:
    """[function(item) for item in items] over up to `jobs` processes (None: one per CPU;
    1, one item or a platform without fork: in this process)."""
    jobs = min(jobs or os.cpu_count() or 1, len(items))
    if jobs <= 1 or not can_fork():
        return [function(item) for item in items]
    global _WORK
    _WORK = (function, items)
    try:
        with signals_held():   # the workers are forked here
            pool = multiprocessing.get_context("fork").Pool(jobs, initializer=child_signals,
                                                            initargs=(os.getpid(),))
        with pool:
            return pool.map(_run_item, range(len(items)), chunksize=1)
    finally:
        _WORK = ()


def shared_empty(shape: tuple, dtype) -> np.ndarray:
    """An uninitialised array in anonymous shared memory: a child forked after this call
    writes into the same pages, so a large result needs no pickling."""
    dtype, count = np.dtype(dtype), int(np.prod(shape))
    buffer = mmap.mmap(-1, max(count * dtype.itemsize, 1))   # MAP_SHARED | MAP_ANONYMOUS
    return np.frombuffer(buffer, dtype, count=count).reshape(shape)


def can_fork() -> bool:
    """Whether this platform can fork (`Forked` works here, even in a pool worker)."""
    return "fork" in multiprocessing.get_all_start_methods()


def usable_jobs(jobs: int | None = None) -> int:
    """How many processes a job may use: `jobs` (None: one per CPU this process may run
    on), 1 where it cannot fork (no fork start method, or inside a pool worker, which
    may not have children)."""
    if not can_fork():
        return 1
    if multiprocessing.current_process().daemon:
        return 1
    if jobs is None:
        jobs = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return max(1, jobs or 1)


class Forked:
    """`function(*args)` running in a forked child while this process goes on: the
    arguments are the child's copy-on-write view of this process's memory (never pickled),
    only the result comes back, pickled through a pipe. `result()` waits for it (and
    re-raises the child's exception); use as a context manager so that an unneeded child
    is stopped. With `parallel` False the call runs at once, here."""

    def __init__(self, function, *args, parallel: bool = True):
        self._pid = None
        if not parallel:
            self._value = function(*args)
            return
        read, write = os.pipe()
        parent = os.getpid()
        with signals_held():   # the child never leaves this block: _child ends it
            pid = os.fork()
            if pid == 0:
                os.close(read)
                _child(write, function, args, parent)
        os.close(write)
        self._pid, self._pipe = pid, os.fdopen(read, "rb")

    def result(self):
        """The function's return value (waiting for the child)."""
        if self._pid is None:
            return self._value
        try:
            status, value = pickle.load(self._pipe)
        except EOFError:
            status, value = "error", ChildProcessError("a forked child exited without a result")
        self._reap()
        self._value = value
        if status != "ok":
            raise value
        return value

    def _reap(self) -> None:
        """Wait for the child to exit and close the pipe."""
        os.waitpid(self._pid, 0)
        self._pipe.close()
        self._pid = None

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        if self._pid is not None:
            os.kill(self._pid, signal.SIGKILL)
            self._reap()


def _child(write: int, function, args, parent: int) -> None:
    """Child side of `Forked`: run, send ("ok", value) or ("error", exception), exit."""
    code = 0
    try:
        child_signals(parent)
        try:
            outcome = ("ok", function(*args))
        except Exception as exc:   # the parent re-raises it
            outcome = ("error", exc)
        with os.fdopen(write, "wb") as pipe:
            pickle.dump(outcome, pipe, protocol=pickle.HIGHEST_PROTOCOL)
    except BaseException:
        code = 1
    finally:
        os._exit(code)
