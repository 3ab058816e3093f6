"""The commands a sweep can run: command name -> library function -> report dict.

A sweep command is a plain library function that takes the command's options as keyword
arguments, named like its long command-line options with `_` (`prompt_len`,
`timing_only`; a positional CONFIG is `model`), with the CLI's defaults, and returns the
report dict (the `--report`/`--json` object). Its signature is the list of options a spec
may name: a parameter without a default is a required option. The parameters named in
PRESETS (`hw`, `prefill_hw`, `link`) take a preset name, a JSON file or an already loaded
preset dataclass; the sweep loads them on the client, applies `hw.FIELD` overrides and
passes the dataclasses to the workers as data.

Adding a command is one line, as for `emu serve`:

    register("serve", "emulator.serve.options:serve_report", metric="goodput_rps")

(the function is imported when a spec names the command). A spec may also name any
importable function as `"command": "package.module:function"` with the same convention.
"""

import importlib
import inspect
from collections.abc import Callable
from dataclasses import dataclass

from emulator.hw.errors import ConfigError
from emulator.hw.link import LinkConfig, load_link
from emulator.hw.mesh import MeshConfig, load_mesh
from emulator.hw.prefill import PrefillConfig, load_prefill


@dataclass(frozen=True)
class Preset:
    """A preset-valued option: its dataclass and its loader (name or JSON file)."""

    cls: type
    load: Callable


# Options that name a preset; `NAME.FIELD` axes override a field of the loaded preset.
PRESETS = {
    "hw": Preset(MeshConfig, load_mesh),
    "prefill_hw": Preset(PrefillConfig, load_prefill),
    "link": Preset(LinkConfig, load_link),
}


@dataclass(frozen=True)
class SweepCommand:
    """A registered command: its function (as 'module:name') and the report field the
    heatmaps and the frontier plot by default (dotted name)."""

    name: str
    target: str
    metric: str
    pareto: tuple[str, str] | None = None   # default --pareto: (x column, y column)

    def function(self) -> Callable:
        """The library function (imported on first use)."""
        return import_function(self.target)


COMMANDS: dict[str, SweepCommand] = {}


def register(name: str, target: str, metric: str,
             pareto: tuple[str, str] | None = None) -> None:
    """Make `name` a sweep command running `target` ('package.module:function')."""
    COMMANDS[name] = SweepCommand(name, target, metric, pareto)


register("run", "emulator.run:run_report", metric="tokens_per_s",
         pareto=("decode.sram.total_bytes:min", "tokens_per_s:max"))
register("prefill", "emulator.prefill.run:prefill_report", metric="seconds",
         pareto=("seconds:min", "achieved_flops_per_s:max"))
register("gemm", "emulator.prefill.gemm:gemm_report", metric="utilization",
         pareto=("total_cycles:min", "utilization:max"))
register("serve", "emulator.serve.options:serve_report", metric="goodput_rps",
         pareto=("cost_usd_per_mtok:min", "goodput_rps:max"))


def import_function(target: str) -> Callable:
    """The function named 'package.module:function'; ConfigError when it does not exist."""
    module_name, _, attr = target.partition(":")
    try:
        function = getattr(importlib.import_module(module_name), attr)
    except (ImportError, AttributeError, ValueError):
        raise ConfigError(f"command '{target}': no such function") from None
    if not callable(function):
        raise ConfigError(f"command '{target}': not a function")
    return function


def lookup(name: str) -> tuple[Callable, SweepCommand | None]:
    """(function, registration or None) of a spec's `command`: a registered name, or
    'module:function'."""
    if name in COMMANDS:
        return COMMANDS[name].function(), COMMANDS[name]
    if ":" in name:
        return import_function(name), None
    known = ", ".join(sorted(COMMANDS))
    raise ConfigError(f"unknown command '{name}' (commands: {known}, or 'module:function')")


def options_of(function: Callable) -> dict:
    """Option name -> default (inspect.Parameter.empty when required) of a command."""
    out = {}
    for name, param in inspect.signature(function).parameters.items():
        if param.kind in (param.POSITIONAL_OR_KEYWORD, param.KEYWORD_ONLY):
            out[name] = param.default
    return out
