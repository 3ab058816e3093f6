"""Run independent jobs in forked worker processes (one per CPU by default).

`fork_map(function, items, jobs)` returns `[function(item) for item in items]`. With more
than one job and more than one item, the items are handed to forked children by index
(so large numpy inputs are shared copy-on-write, never pickled) and only the results come
back pickled. Used to emulate a multi-wafer system's distinct wafer programs at once
(compiler/system.py); every job must be deterministic, so the results equal a serial
run's.
"""

import multiprocessing
import os

_WORK: tuple = ()   # (function, items) while a fork_map runs; read by the children


def _run_item(index: int):
    """Child side: apply the function to item `index`."""
    function, items = _WORK
    return function(items[index])


def fork_map(function, items: list, jobs: int | None = None) -> list:
    """[function(item) for item in items] over up to `jobs` processes (None: one per CPU;
    1, one item or a platform without fork: in this process)."""
    jobs = min(jobs or os.cpu_count() or 1, len(items))
    if jobs <= 1 or "fork" not in multiprocessing.get_all_start_methods():
        return [function(item) for item in items]
    global _WORK
    _WORK = (function, items)
    try:
        with multiprocessing.get_context("fork").Pool(jobs) as pool:
            return pool.map(_run_item, range(len(items)), chunksize=1)
    finally:
        _WORK = ()
