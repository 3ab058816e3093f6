"""`emu run`: end-to-end disaggregated inference (prefill chip -> link -> decode wafer).

With no CONFIG it runs the bundled tiny Llama-style model with seeded weights on the small
mesh preset. Output paths (--report, --logits, --trace, --plots) are checked before the
run starts and written together only after it succeeded (emulator/outputs.py); `-` is
stdout.
"""

import dataclasses
import time

import click
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from emulator.cli.common import prepare_mesh_kernels
from emulator.hw.errors import ConfigError
from emulator.outputs import Outputs
from emulator.run import batch_sweep, build_request, parse_batches, run_inference
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
        """run_inference's progress callback: `done` of `total` steps (shown on a terminal
        only: elsewhere the bar would leave a blank line on stderr)."""
        if not self.bar.console.is_terminal:
            return
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
@click.option("--prefill-chips", default=None, metavar="N",
              help="Prefill chips (tensor parallel) [default: the fewest whose HBM holds the "
                   "model, KV and activations].")
@click.option("--prefill-dtype", default=None, type=click.Choice(["fp32", "fp16", "bf16", "fp8"]),
              help="Prefill matmul dtype [default: --dtype]; fp8 needs --timing-only.")
@click.option("--prefill-chunk", default=None, metavar="N",
              help="Chunked prefill: N prompt tokens per pass, each chunk's KV streamed to "
                   "the link while the next one computes [default: one pass].")
@click.option("--link", default="efa", show_default=True, help="Link preset name or JSON file.")
@click.option("--weights", type=click.Path(),
              help="Weights: a .safetensors file, a sharded checkpoint's index.json, or a "
                   "model folder [default: the weights in a model folder CONFIG, else random].")
@click.option("--seed", type=click.IntRange(0, 2**32 - 1), default=None,
              help="Seed of the random weights and prompt [default: 0; with a model folder "
                   "CONFIG, random weights instead of the folder's].")
@click.option("--prompt-tokens", help="Prompt token ids, comma separated.")
@click.option("--prompt-len", type=click.IntRange(min=1),
              help="Random prompt of this many tokens (default 8).")
@click.option("--max-new-tokens", default=8, show_default=True, type=click.IntRange(min=1),
              help="Tokens to generate (the first from prefill, the rest decode steps).")
@click.option("--dtype", default="bf16", show_default=True,
              type=click.Choice(["fp32", "fp16", "bf16"]),
              help="Storage format of weights, KV cache and activations.")
@click.option("--weight-dtype", default=None, type=click.Choice(["bf16", "fp8", "mxfp4"]),
              help="Storage format of the MLP / expert weight tiles on the mesh (SRAM "
                   "bytes and dequantisation cycles follow) [default: --dtype].")
@click.option("--timing-only", is_flag=True, help="Count cycles without computing values.")
@click.option("--overlap-kv", is_flag=True, help="Send each layer's KV as prefill finishes it.")
@click.option("--engine", default="numba", show_default=True,
              type=click.Choice(["numba", "reference"]), help="Mesh engine.")
@click.option("--report", "report_path", metavar="FILE|-",
              help="Write the report as JSON ('-': stdout).")
@click.option("--logits", "logits_path", metavar="FILE|-",
              help="Write logits float32 [max_new_tokens, vocab] (.npy).")
@click.option("--trace", "trace_path", metavar="FILE|-",
              help="Write a Perfetto trace (JSON).")
@click.option("--plots", "plots_dir", metavar="DIR",
              help="Write PNG heatmaps and charts into this folder.")
@click.option("--batch", default=1, show_default=True, type=click.IntRange(min=1),
              help="Users decoded together on the wafer (each with its own prompt and KV "
                   "cache; --prompt-tokens takes one prompt per user separated by ';').")
@click.option("--batch-sweep", "batch_sweep_list", metavar="B1,B2,...",
              help="Run at each batch size; print per-user and aggregate tokens/s and, "
                   "with --plots, draw batch_sweep.png.")
@click.option("--quiet", is_flag=True, help="Print no tables.")
def run(config, hw, mesh_size, prefill_hw, prefill_chips, prefill_dtype, prefill_chunk, link,
        weights, seed,
        prompt_tokens, prompt_len, max_new_tokens, dtype, weight_dtype, timing_only, overlap_kv,
        engine, report_path, logits_path, trace_path, plots_dir, batch, batch_sweep_list, quiet):
    """Prefill on the systolic chip, move the KV cache, decode on the wafer; report it."""
    if logits_path and timing_only:
        raise ConfigError("--logits needs values: drop --timing-only")
    batches = parse_batches(batch_sweep_list) if batch_sweep_list is not None else None
    if batches is not None and batch != 1:
        raise ConfigError("give either --batch or --batch-sweep, not both")
    outputs = Outputs()
    report_file = outputs.file(report_path, "--report")
    logits_file = outputs.file(logits_path, "--logits")
    trace_file = outputs.file(trace_path, "--trace")
    from emulator.views.plots import BATCH_SWEEP_PNG, PLOT_NAMES

    plots = outputs.directory(plots_dir, "--plots",
                              PLOT_NAMES + ((BATCH_SWEEP_PNG,) if batches else ()))
    req = build_request(config, hw, mesh_size, prefill_hw, link, weights, seed, prompt_tokens,
                        prompt_len, max_new_tokens, dtype, timing_only, overlap_kv, engine,
                        prefill_chips, prefill_dtype, prefill_chunk, batch, weight_dtype)
    console = Console(stderr=True)
    started = time.perf_counter()
    if engine == "numba":
        prepare_mesh_kernels(console)
    with DecodeProgress(console, total=max(1, max_new_tokens - 1)) as progress:
        if batches is None:
            outcome = run_inference(req, progress.update)
        else:
            outcome, points = batch_sweep(req, batches, progress.update)
            req = dataclasses.replace(req, batch=outcome.report["batch"])
    outcome.report["host_seconds"] = time.perf_counter() - started
    if plots is not None:
        from emulator.views.plots import batch_sweep_plot, render_plots

        for name, data in render_plots(outcome, req).items():
            outputs.write_bytes(outputs.in_folder(plots, name), data)
        if batches is not None:
            files: dict = {}
            batch_sweep_plot(points, f"{req.model_name} on {req.mesh.name}: batch sweep "
                                     f"({req.dtype}, context {req.prompt_len + max_new_tokens})",
                             (files, BATCH_SWEEP_PNG))
            outputs.write_bytes(outputs.in_folder(plots, BATCH_SWEEP_PNG), files[BATCH_SWEEP_PNG])
    outputs.write_json(report_file, outcome.report)
    outputs.save_npy(logits_file, outcome.logits)
    if trace_file is not None:
        outputs.write_json(trace_file, outcome.trace.to_dict())
    outputs.commit()
    if not quiet and not outputs.uses_stdout:      # `--report -` keeps stdout pure JSON
        print_report(outcome.report)


COMMANDS = [run]
