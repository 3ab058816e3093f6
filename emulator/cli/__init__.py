"""The `emu` command line: a click group whose subcommands live in `emulator/cli/*.py`.

Every `EmuError` raised by a subcommand becomes one line on stderr and exit status 2
(DESIGN.md section 5); output files are written atomically so none is left half-written.
"""

import sys

import click

from emulator.hw.errors import EmuError


class EmuGroup(click.Group):
    """A click group that reports user errors as one line and exit status 2."""

    def invoke(self, ctx):
        try:
            return super().invoke(ctx)
        except EmuError as exc:
            click.echo(f"emu: error: {exc}", err=True)
            sys.exit(2)
        except KeyboardInterrupt:
            click.echo("emu: interrupted", err=True)
            sys.exit(130)


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
]


def _register():
    """Attach the subcommands of every module in COMMAND_MODULES."""
    import importlib

    for module_name in COMMAND_MODULES:
        for command in importlib.import_module(module_name).COMMANDS:
            main.add_command(command)


_register()
