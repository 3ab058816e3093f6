"""User-facing error types.

Every error a user can cause (bad file, bad field, program fault, model that does not fit)
is raised as an `EmuError` subclass. The CLI turns it into one line on stderr and exit
status 2; nothing else is caught, so a genuine bug still shows its traceback.
"""


class EmuError(Exception):
    """An error caused by the user's input; its message names the file and field/line/PE."""


class ConfigError(EmuError):
    """A malformed or impossible configuration file or field (preset, model config, weights)."""


class AsmError(EmuError):
    """An assembly error; the message starts with `file:line:column:`."""


class MeshFault(EmuError):
    """A fault while emulating a mesh program; the message names the PE and the cycle."""


class FitError(EmuError):
    """A model that does not fit the machine; the message gives required vs available bytes."""


class OutputError(EmuError):
    """An output path that cannot be written (checked before the work starts), or a failed
    commit of the outputs; the message names the option and the path."""


class ResourceError(EmuError):
    """A run whose arrays would need more host memory than the limit; the message names
    the bytes needed and the limit (emulator/limits.py)."""


class BudgetError(EmuError):
    """A run stopped by its wall-clock budget (the reference engine's --max-seconds)."""


class Terminated(KeyboardInterrupt):
    """SIGTERM, raised in the main thread like SIGINT's KeyboardInterrupt so that every
    `finally` and `except BaseException` clean-up runs; the CLI exits with status 143."""
