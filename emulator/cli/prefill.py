"""`emu gemm` and `emu prefill`: the systolic prefill machine from the command line.

`emu gemm M N K` times C[M,N] = A[M,K] @ B[K,N]: in SCALE-Sim-compatible mode with
SCALE-Sim 3.0's fold formulas, otherwise as a Trainium instruction stream (DMA from HBM,
TensorE, PSUM eviction) through the engine model. `emu prefill CONFIG` lowers a prefill of a
model onto one chip and reports per-layer and per-operator cycles next to their roofline
bounds, engine utilisation and bytes moved. Bad input is a ConfigError: one line, exit 2.
"""

import json
from collections import defaultdict

import click
from rich.console import Console
from rich.table import Table

from emulator.prefill.run import parse_chips
from emulator.views.report import si_bytes, si_seconds

__all__ = ["COMMANDS", "parse_chips"]      # parse_chips: emu run's --prefill-chips too

prefill_hw_option = click.option("--prefill-hw", "prefill_hw", default="trn2",
                                 show_default=True, metavar="NAME|FILE",
                                 help="Prefill preset (trn2, trn3, trn2-48xl, "
                                      "trn3-ultraserver) or a JSON file.")


@click.command("gemm", context_settings={"ignore_unknown_options": True})
@click.argument("m")
@click.argument("n")
@click.argument("k")
@prefill_hw_option
@click.option("--array", "array", metavar="RxC", help="Systolic array shape (default: preset).")
@click.option("--dataflow", default="ws", show_default=True, metavar="ws|os|is",
              help="Dataflow: weight, output or input stationary.")
@click.option("--scalesim-compat", is_flag=True,
              help="SCALE-Sim 3.0 compute cycles (no overlap, ideal memory).")
@click.option("--dtype", default="bf16", show_default=True, metavar="bf16|fp16|fp32",
              help="Operand dtype (Trainium mode).")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
def gemm_command(m, n, k, prefill_hw, array, dataflow, scalesim_compat, dtype, as_json):
    """Cycles of one GEMM C[M,N] = A[M,K] @ B[K,N]."""
    from emulator.prefill.gemm import gemm_from_options

    result = gemm_from_options(m, n, k, prefill_hw, array, dataflow, scalesim_compat, dtype)
    if as_json:
        click.echo(json.dumps(result.to_dict()))
        return
    Console().print(_gemm_table(result))


def _gemm_table(result) -> Table:
    """Rich table of one GEMM result."""
    mode = "SCALE-Sim compatible" if result.mode == "scalesim" else "Trainium engine model"
    table = Table(title=f"emu gemm {result.M}x{result.N}x{result.K} on {result.rows}x"
                        f"{result.cols} ({result.dataflow}, {mode})", title_justify="left")
    table.add_column("metric")
    table.add_column("value", justify="right")
    table.add_row("compute cycles", f"{result.compute_cycles:,}")
    table.add_row("total cycles", f"{result.total_cycles:,}")
    table.add_row("utilisation", f"{100 * result.utilization:.1f} %")
    table.add_row("roofline bound (cycles)", f"{result.roofline_cycles:,}")
    if result.mode == "scalesim":
        table.add_row("folds x cycles per fold", f"{result.folds:,} x {result.fold_cycles:,}")
    else:
        table.add_row("time", si_seconds(result.total_cycles / result.clock_hz))
        for engine, busy in result.engine_busy.items():
            table.add_row(f"{engine} busy cycles", f"{busy:,}")
    return table


@click.command("prefill")
@click.argument("config")
@prefill_hw_option
@click.option("--prompt-len", default=None, metavar="N", help="Prompt length (default 128).")
@click.option("--prompt-tokens", default=None, metavar="1,2,3", help="Explicit token ids.")
@click.option("--seed", type=click.IntRange(0, 2**32 - 1), default=0, show_default=True,
              help="Seed of random weights and tokens.")
@click.option("--weights", "weights_path", default=None, metavar="FILE.safetensors",
              help="Model weights (default: random from --seed).")
@click.option("--dtype", "--prefill-dtype", "dtype", default="bf16", show_default=True,
              metavar="fp32|fp16|bf16|fp8", help="Matmul operand dtype (fp8: timing-only).")
@click.option("--prefill-chips", "chips", default=None, metavar="N",
              help="Chips (tensor parallel); default the fewest whose HBM holds the model.")
@click.option("--prefill-chunk", "chunk", default=None, metavar="N",
              help="Chunked prefill: N prompt tokens per pass [default: one pass].")
@click.option("--weight-dtype", "weight_dtype", default=None, metavar="bf16|fp8|mxfp4",
              help="Storage of the layers' weights [default: the matmul dtype]; others are "
                   "dequantised on VectorE.")
@click.option("--prefill-stages", "stages", default=None, metavar="S",
              help="Pipeline parallelism: the layers over S stages of --prefill-chips chips "
                   "each, the chunks flowing through [default: 1].")
@click.option("--timing-only", is_flag=True, help="Skip values (real model sizes).")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
def prefill_command(config, prefill_hw, prompt_len, prompt_tokens, seed, weights_path, dtype,
                    chips, chunk, weight_dtype, stages, timing_only, as_json):
    """Time (and compute) the prefill of CONFIG on the chips of a prefill preset."""
    from emulator.prefill.run import prefill_from_options

    result = prefill_from_options(config, prefill_hw, prompt_len, prompt_tokens, seed,
                                  weights_path, dtype, timing_only, chips, chunk,
                                  weight_dtype, stages)
    report = result.summary()
    report["model"] = str(config)
    if as_json:
        if result.logits_last is not None:
            report["logits_last_argmax"] = int(result.logits_last.argmax())
        click.echo(json.dumps(report))
        return
    console = Console()
    tables = [_headline(result, config), _layer_table(result), _op_table(result),
              _engine_table(result)]
    if result.chunk:
        tables.insert(1, _chunk_table(result))
    for table in tables:
        console.print(table)


def _chunk_table(result) -> Table:
    """One row per chunk of a chunked prefill."""
    table = Table(title=f"chunks of {result.chunk} tokens (run back to back)",
                  title_justify="left")
    for name in ("chunk", "positions", "cycles", "time", "ends at"):
        table.add_column(name, justify="right")
    for row in result.chunk_rows:
        table.add_row(str(row["index"]), f"{row['past']}-{row['past'] + row['tokens'] - 1}",
                      f"{row['cycles']:,}", si_seconds(row["cycles"] / result.clock_hz),
                      si_seconds(row["end_seconds"]))
    return table


def _headline(result, config) -> Table:
    table = Table(title=f"emu prefill {config}: {result.prompt_len} tokens on {result.chips} x "
                        f"{result.hw_name} ({result.dtype}, {result.cores} cores)",
                  title_justify="left")
    table.add_column("metric")
    table.add_column("emulated", justify="right")
    table.add_column("roofline bound", justify="right")
    table.add_row("prefill time", si_seconds(result.seconds), si_seconds(result.roofline_seconds))
    if result.pipeline is not None:
        pipe = result.pipeline
        table.add_row(f"pipelined: {pipe.stages} stages x {pipe.chips_per_stage} chip(s)",
                      si_seconds(pipe.seconds), f"bubble {100 * pipe.bubble:.1f} %")
    table.add_row("TensorE cycles", f"{result.cycles:,}",
                  f"{round(result.roofline_seconds * result.clock_hz):,}")
    table.add_row("model FLOPs", f"{result.flops:.4g}", "")
    table.add_row("HBM bytes moved (DMA)", si_bytes(result.bytes_moved["hbm_dma"]), "")
    table.add_row("collective bytes", si_bytes(result.bytes_moved["collective"]), "")
    moe = result.moe_summary()
    if moe is not None:
        table.add_row("MoE routing", f"{moe['routing']}: {moe['routed_tokens_per_layer']:,} "
                      f"tokens x experts per layer, busiest expert {moe['imbalance']:.2f}x "
                      f"the mean", "")
    if result.weight_dtype and result.weight_dtype != result.dtype:
        table.add_row("weights stored as", result.weight_dtype, "")
    stored, represented = result.instructions()
    table.add_row("instructions lowered", f"{stored:,}", "")
    table.add_row("instructions represented", f"{represented:,}", "")
    table.add_row("host time", f"{result.host_seconds:.2f} s", "")
    return table


def collapse_layers(per_layer: list[dict]) -> list[tuple[str, dict]]:
    """Consecutive decoder layers with equal cycles, roofline and bytes as one row
    ("2-31"); lm_head (layer -1) stays its own row."""
    rows: list[list] = []
    keys = ("cycles", "roofline_cycles", "dma_bytes")
    for row in per_layer:
        last = rows[-1] if rows else None
        if (last is not None and row["layer"] >= 0 and last[1]["layer"] >= 0
                and all(last[1][k] == row[k] for k in keys)):
            last[2] = row["layer"]
            continue
        rows.append([row["layer"], row, row["layer"]])
    out = []
    for first, row, last in rows:
        if first < 0:
            label = "lm_head"
        else:
            label = str(first) if first == last else f"{first}-{last}"
        out.append((label, row))
    return out


def _layer_table(result) -> Table:
    table = Table(title="per layer (equal consecutive layers collapsed; cycles per layer)",
                  title_justify="left")
    for name in ("layer", "cycles", "time", "roofline cycles", "DMA bytes"):
        table.add_column(name, justify="right")
    for label, row in collapse_layers(result.per_layer):
        table.add_row(label, f"{row['cycles']:,}", si_seconds(row["cycles"] / result.clock_hz),
                      f"{row['roofline_cycles']:,}", si_bytes(row["dma_bytes"]))
    return table


def _op_table(result) -> Table:
    """Operators summed over layers: span, engine busy (chip), roofline."""
    totals = defaultdict(lambda: defaultdict(float))
    for op in result.per_op:
        row = totals[op["name"]]
        row["cycles"] += op["cycles"]
        row["roofline"] += op["roofline_cycles"]
        row["dma"] += op["dma_bytes"]
        row["count"] += 1
        for engine, busy in op["busy"].items():
            row[engine] += busy
    table = Table(title="per operator, summed over layers (cycles; busy: all cores)",
                  title_justify="left")
    for name in ("op", "cycles", "roofline", "tensor", "vector", "scalar", "DMA"):
        table.add_column(name, justify="right" if name != "op" else "left", no_wrap=True)
    for name, row in totals.items():
        table.add_row(name, f"{int(row['cycles']):,}", f"{int(row['roofline']):,}",
                      f"{int(row['tensor']):,}", f"{int(row['vector']):,}",
                      f"{int(row['scalar']):,}", si_bytes(row["dma"]))
    return table


def _engine_table(result) -> Table:
    table = Table(title="engine utilisation (all cores)", title_justify="left")
    table.add_column("engine")
    table.add_column("busy cycles", justify="right")
    table.add_column("utilisation", justify="right")
    util = result.engine_utilization
    for engine, busy in result.engine_busy.items():
        table.add_row(engine, f"{busy:,}", f"{100 * util[engine]:.1f} %")
    return table


COMMANDS = [gemm_command, prefill_command]
