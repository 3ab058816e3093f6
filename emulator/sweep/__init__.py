"""Design-space exploration: run one emu command over many points on a Dask cluster.

`load_spec` reads and validates a sweep spec (JSON or YAML) into points; `run_sweep` runs
the points not yet in the output folder's cache as Dask tasks (in-process library calls,
presets passed as data) and writes `results.parquet` / `results.csv`; `write_sweep_plots`
draws the Pareto frontier and heatmaps. Commands are registered in
`emulator.sweep.commands` (docs/sweeps.md).
"""

from emulator.sweep.commands import COMMANDS, register
from emulator.sweep.driver import SweepOutcome, local_client, remote_client, run_sweep
from emulator.sweep.plots import write_sweep_plots
from emulator.sweep.spec import Spec, load_spec

__all__ = ["COMMANDS", "Spec", "SweepOutcome", "load_spec", "local_client", "register",
           "remote_client", "run_sweep", "write_sweep_plots"]
