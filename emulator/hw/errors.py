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
