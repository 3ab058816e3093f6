"""The `emu` command line: a click group whose subcommands live in `emulator/cli/*.py`.

Every `EmuError` raised by a subcommand, and every click usage error, becomes one line on
stderr and exit status 2 (DESIGN.md section 5); SIGINT and SIGTERM end a command with one
line and status 130 or 143 (emulator/cli/interrupts.py). Outputs go through
emulator/outputs.py: checked before the work, committed together at the end, so none is
left half-written (docs/reliability.md).
"""

import os
import signal
import sys


def _quiet_exit(signum, frame):
    """Until the command's own handlers are in place (imports, option parsing)."""
    os.write(2, b"emu: terminated\n" if signum == signal.SIGTERM else b"emu: interrupted\n")
    os._exit(143 if signum == signal.SIGTERM else 130)


if os.path.basename(sys.argv[0] if sys.argv else "") == "emu":   # the console script
    signal.signal(signal.SIGINT, _quiet_exit)
    signal.signal(signal.SIGTERM, _quiet_exit)

import click  # noqa: E402

from emulator.cli.interrupts import interrupt_handling, received, stop_quietly  # noqa: E402
from emulator.hw.errors import EmuError  # noqa: E402


def _fail(text: str, code: int = 2):
    click.echo(f"emu: error: {text}", err=True)
    sys.exit(code)


class EmuGroup(click.Group):
    """A click group that reports user errors as one line and exit status 2."""

    def main(self, args=None, prog_name=None, complete_var=None, standalone_mode=True,
             **extra):
        """click's main, with usage errors as one line and interrupts as 130/143."""
        with interrupt_handling():
            try:
                value = super().main(args, prog_name, complete_var, standalone_mode=False,
                                     **extra)
            except click.exceptions.Abort as exc:
                cause = exc.__cause__ or exc.__context__
                if isinstance(cause, KeyboardInterrupt):
                    stop_quietly(cause)
                sys.exit(1)
            except click.exceptions.NoArgsIsHelpError as exc:
                click.echo(exc.ctx.get_help(), err=True)
                sys.exit(exc.exit_code)
            except click.UsageError as exc:
                path = exc.ctx.command_path if exc.ctx is not None else "emu"
                _fail(f"{exc.format_message()} (see '{path} --help')", exc.exit_code)
            except click.ClickException as exc:
                _fail(exc.format_message(), exc.exit_code)
            except KeyboardInterrupt as exc:
                stop_quietly(exc)
            except BrokenPipeError:
                if received() is not None:
                    stop_quietly()
                devnull = os.open(os.devnull, os.O_WRONLY)
                os.dup2(devnull, sys.stdout.fileno())
                sys.exit(1)
            if received() is not None:   # an interrupt Python swallowed (a finaliser)
                stop_quietly()
        sys.exit(value if isinstance(value, int) else 0)

    def invoke(self, ctx):
        try:
            return super().invoke(ctx)
        except EmuError as exc:
            if received() is not None:      # raised because of the signal (see received)
                stop_quietly()
            _fail(str(exc))
        except MemoryError:
            _fail("ran out of host memory (a size the resource guards of "
                  "docs/reliability.md did not foresee); set EMU_MEMORY_LIMIT lower or "
                  "use a smaller size")
        except KeyboardInterrupt as exc:
            stop_quietly(exc)
        except Exception:
            if received() is not None:      # raised because of the signal (see received)
                stop_quietly()
            raise


@click.group(cls=EmuGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="emu-wafer")
def main():
    """emu: emulate LLM prefill on a systolic accelerator and decode on a wafer-scale mesh."""


# Modules that define subcommands; each exposes `COMMANDS`, a list of click commands.
COMMAND_MODULES: list[str] = [
    "emulator.cli.asm",
    "emulator.cli.prefill",
    "emulator.cli.compile",
    "emulator.cli.run",
    "emulator.cli.map",
    "emulator.cli.step",
    "emulator.cli.bench",
    "emulator.cli.presets",
    "emulator.cli.sweep",
    "emulator.cli.serve",
]


def _register():
    """Attach the subcommands of every module in COMMAND_MODULES."""
    import importlib

    for module_name in COMMAND_MODULES:
        for command in importlib.import_module(module_name).COMMANDS:
            main.add_command(command)


_register()
