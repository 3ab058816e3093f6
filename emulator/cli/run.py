"""`emu run`: end-to-end disaggregated inference (prefill chip -> link -> decode wafer).

With no CONFIG it runs the bundled tiny Llama-style model with seeded weights on the small
mesh preset. Output files (--report, --logits, --trace, --plots) are written only after
the whole run succeeded, each atomically.
"""

import time

import click
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from emulator.cli.common import prepare_mesh_kernels
from emulator.files import atomic_save_npy, atomic_write_json
from emulator.hw.errors import ConfigError
from emulator.run import build_request, run_inference
from emulator.views.report import print_report


class DecodeProgress:
    """The decode progress bar on stderr, shown from the first decode step on (so an error
    raised while compiling or prefilling is the only thing the command prints)."""

    def __init__(self, console: Console, total: int):
        self.bar = Progress(TextColumn("decode"), BarColumn(), MofNCompleteColumn(),
                            TimeElapsedColumn(), console=console, transient=True)
        self.task = self.bar.add_task("decode", total=total)
        self.started = False

    def update(self, done: int, total: int) -> None:
        """run_inference's progress callback: `done` of `total` steps."""
        if not self.started:
            self.bar.start()
            self.started = True
        self.bar.update(self.task, completed=done, total=total)

    def __enter__(self) -> "DecodeProgress":
        return self

    def __exit__(self, *exc) -> None:
        if self.started:
            self.bar.stop()


@click.command()
@click.argument("config", required=False)
@click.option("--hw", default="small", show_default=True,
              help="Decode mesh preset name or JSON file.")
@click.option("--mesh", "mesh_size", help="Override the mesh size, WIDTHxHEIGHT in PEs.")
@click.option("--prefill-hw", default="auto", show_default=True,
              help="Prefill chip preset name or JSON file; auto: trn2, or trn3 when the "
                   "model does not fit trn2's HBM.")
@click.option("--link", default="efa", show_default=True, help="Link preset name or JSON file.")
@click.option("--weights", type=click.Path(),
              help="Weights: a .safetensors file, a sharded checkpoint's index.json, or a "
                   "model folder [default: the weights in a model folder CONFIG, else random].")
@click.option("--seed", type=int, default=None,
              help="Seed of the random weights and prompt [default: 0; with a model folder "
                   "CONFIG, random weights instead of the folder's].")
@click.option("--prompt-tokens", help="Prompt token ids, comma separated.")
@click.option("--prompt-len", type=int, help="Random prompt of this many tokens (default 8).")
@click.option("--max-new-tokens", default=8, show_default=True, type=int,
              help="Tokens to generate (the first from prefill, the rest decode steps).")
@click.option("--dtype", default="bf16", show_default=True,
              type=click.Choice(["fp32", "fp16", "bf16"]),
              help="Storage format of weights, KV cache and activations.")
@click.option("--timing-only", is_flag=True, help="Count cycles without computing values.")
@click.option("--overlap-kv", is_flag=True, help="Send each layer's KV as prefill finishes it.")
@click.option("--engine", default="numba", show_default=True,
              type=click.Choice(["numba", "reference"]), help="Mesh engine.")
@click.option("--report", "report_path", type=click.Path(dir_okay=False),
              help="Write the report as JSON.")
@click.option("--logits", "logits_path", type=click.Path(dir_okay=False),
              help="Write logits float32 [max_new_tokens, vocab] (.npy).")
@click.option("--trace", "trace_path", type=click.Path(dir_okay=False),
              help="Write a Perfetto trace (JSON).")
@click.option("--plots", "plots_dir", type=click.Path(file_okay=False),
              help="Write PNG heatmaps and charts into this folder.")
@click.option("--quiet", is_flag=True, help="Print no tables.")
def run(config, hw, mesh_size, prefill_hw, link, weights, seed, prompt_tokens, prompt_len,
        max_new_tokens, dtype, timing_only, overlap_kv, engine, report_path, logits_path,
        trace_path, plots_dir, quiet):
    """Prefill on the systolic chip, move the KV cache, decode on the wafer; report it."""
    if logits_path and timing_only:
        raise ConfigError("--logits needs values: drop --timing-only")
    req = build_request(config, hw, mesh_size, prefill_hw, link, weights, seed, prompt_tokens,
                        prompt_len, max_new_tokens, dtype, timing_only, overlap_kv, engine)
    console = Console(stderr=True)
    started = time.perf_counter()
    if engine == "numba":
        prepare_mesh_kernels(console)
    with DecodeProgress(console, total=max(1, max_new_tokens - 1)) as progress:
        outcome = run_inference(req, progress.update)
    outcome.report["host_seconds"] = time.perf_counter() - started
    if plots_dir:
        from emulator.views.plots import write_plots

        write_plots(outcome, req, plots_dir)
    if report_path:
        atomic_write_json(report_path, outcome.report)
    if logits_path:
        atomic_save_npy(logits_path, outcome.logits)
    if trace_path:
        outcome.trace.write(trace_path)
    if not quiet:
        print_report(outcome.report)


COMMANDS = [run]
