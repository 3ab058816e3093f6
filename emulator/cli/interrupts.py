"""SIGINT and SIGTERM for the `emu` command: exit 130 or 143, one line, nothing left behind.

`interrupt_handling()` (entered by the `emu` group around every command) installs:

- handlers that raise `KeyboardInterrupt` (SIGINT) or `hw.errors.Terminated` (SIGTERM) in
  the main thread, once: later signals are ignored so that the clean-up (`finally` blocks,
  `Outputs` discarding what it staged, forked children being killed) runs to its end;
- a watchdog thread woken by the signal through `signal.set_wakeup_fd`. The handlers above
  run only between Python bytecodes, so a long Numba kernel (they release the GIL) would
  delay them for as long as it runs; when the main thread has not ended `GRACE_S` seconds
  after the signal and no output commit is under way (`emulator.outputs.committing`), the
  watchdog prints the same line and ends the process with `os._exit`. Nothing is lost:
  outputs exist only in memory until the commit, and every forked child dies with its
  parent (emulator/mesh/parallel.py sets PR_SET_PDEATHSIG in each).

The group then prints `emu: interrupted` or `emu: terminated` and exits 130 or 143.
A `KeyboardInterrupt` raised where Python cannot propagate it (a finaliser, a weakref
callback: "Exception ignored in ...") is not printed (`_quiet_unraisable`); the signal
is still recorded, and the group ends the command on it once the command returns.
"""

import contextlib
import os
import signal
import sys
import threading
import time

from emulator.hw.errors import Terminated
from emulator.outputs import committing

GRACE_S = 1.0       # seconds the main thread gets to unwind before the watchdog exits
EXIT_CODES = {signal.SIGINT: 130, signal.SIGTERM: 143}
MESSAGES = {signal.SIGINT: "emu: interrupted", signal.SIGTERM: "emu: terminated"}

_state = {"signal": None}


def exit_code(exc: BaseException) -> int:
    """130 for SIGINT (KeyboardInterrupt), 143 for SIGTERM (Terminated)."""
    return 143 if isinstance(exc, Terminated) else 130


def message(exc: BaseException) -> str:
    return "emu: terminated" if isinstance(exc, Terminated) else "emu: interrupted"


def _ignore_further() -> None:
    for sig in EXIT_CODES:
        signal.signal(sig, signal.SIG_IGN)


def _handler(signum, frame):
    """Main-thread handler: raise once, then ignore further signals during clean-up."""
    _state["signal"] = signum
    _ignore_further()
    if signum == signal.SIGTERM:
        raise Terminated()
    raise KeyboardInterrupt()


def _watch(read_fd: int, done: threading.Event) -> None:
    """Watchdog thread: after a signal, give the main thread GRACE_S to finish, then exit
    (unless the command has ended meanwhile: `done`)."""
    while True:
        try:
            data = os.read(read_fd, 64)
        except OSError:
            return
        if not data:
            return
        signum = data[-1]
        if signum not in EXIT_CODES:
            continue
        deadline = time.monotonic() + GRACE_S
        while time.monotonic() < deadline or committing():
            if done.wait(0.05):
                return
        try:
            os.write(2, (MESSAGES[signum] + "\n").encode())
        finally:
            os._exit(EXIT_CODES[signum])


def _quiet_unraisable(hook):
    """sys.unraisablehook that drops the interrupts the handlers raised where they could
    not propagate (the signal is recorded in `_state`) and passes the rest to `hook`."""
    def quiet(unraisable) -> None:
        if not isinstance(unraisable.exc_value, (KeyboardInterrupt, Terminated)):
            hook(unraisable)
    return quiet


@contextlib.contextmanager
def interrupt_handling():
    """Install the handlers and the watchdog for one command (restored afterwards)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    _state["signal"] = None
    previous = {sig: signal.getsignal(sig) for sig in EXIT_CODES}
    read_fd, write_fd = os.pipe()
    os.set_blocking(write_fd, False)
    old_fd = signal.set_wakeup_fd(write_fd, warn_on_full_buffer=False)
    done = threading.Event()
    watchdog = threading.Thread(target=_watch, args=(read_fd, done),
                                name="emu-interrupt-watchdog", daemon=True)
    watchdog.start()
    for sig in EXIT_CODES:
        signal.signal(sig, _handler)
    previous_hook, sys.unraisablehook = sys.unraisablehook, _quiet_unraisable(sys.unraisablehook)
    try:
        yield
    finally:
        sys.unraisablehook = previous_hook
        done.set()
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        signal.set_wakeup_fd(old_fd)
        os.close(write_fd)          # the watchdog reads EOF and ends
        watchdog.join(timeout=1.0)
        os.close(read_fd)


def received() -> int | None:
    """The signal number this command received (None: none). An exception raised after a
    signal is its consequence (e.g. Numba's dispatcher turning the KeyboardInterrupt raised
    while it converted arguments into a SystemError), so the CLI reports the signal."""
    return _state["signal"]


def stop_quietly(exc: BaseException | None = None) -> None:
    """Print the one line for an interrupt (`exc`, else the signal received) and exit with
    its status (ignoring any further signal while exiting)."""
    with contextlib.suppress(ValueError):
        _ignore_further()
    if exc is None:
        exc = Terminated() if received() == signal.SIGTERM else KeyboardInterrupt()
    sys.stderr.write(message(exc) + "\n")
    sys.stderr.flush()
    sys.exit(exit_code(exc))
