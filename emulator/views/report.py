"""The `emu run` report: a JSON-ready dict (schema in docs/report.md) and its rich tables.

The orchestrator fills the dict; this module only formats it. Every time is shown next to
its roofline bound where one exists, so a reader sees how far from ideal each stage is.
"""

from rich.console import Console
from rich.table import Table

from emulator.views.tables import collapse_runs, output_console, print_tables


def si_seconds(seconds) -> str:
    """A time with a readable unit (s, ms, us, ns)."""
    if seconds is None:
        return "-"
    for unit, scale in (("s", 1.0), ("ms", 1e-3), ("us", 1e-6)):
        if abs(seconds) >= scale:
            return f"{seconds / scale:,.3f} {unit}"
    return f"{seconds / 1e-9:,.1f} ns"


def si_bytes(nbytes) -> str:
    """A byte count with a binary unit (B, KiB, MiB or GiB)."""
    if nbytes is None:
        return "-"
    if abs(nbytes) < 1024:
        return f"{nbytes:,.0f} B"
    value, unit = float(nbytes) / 1024, "KiB"
    for bigger in ("MiB", "GiB"):
        if abs(value) < 1024:
            break
        value, unit = value / 1024, bigger
    return f"{value:,.2f} {unit}"


def _percent(fraction) -> str:
    return "-" if fraction is None else f"{100 * fraction:.1f} %"


def summary_table(report: dict) -> Table:
    """Headline numbers: TTFT, time per output token, tokens/s, each with its bound."""
    prefill, kv, decode = report["prefill"], report["kv_transfer"], report["decode"]
    table = Table(title=f"emu run: {report['model']['name']} "
                        f"({report['mode']}, {report['dtype']})", title_justify="left")
    table.add_column("metric")
    table.add_column("emulated", justify="right")
    table.add_column("bound", justify="right")
    ttft_bound = (prefill.get("roofline_seconds") or 0) + (kv.get("bound_seconds") or 0)
    table.add_row("time to first token", si_seconds(report["ttft_s"]), si_seconds(ttft_bound))
    table.add_row("time per output token", si_seconds(report["tpot_s"]),
                  si_seconds(decode.get("bound_seconds_per_token")))
    bound_rate = decode.get("bound_seconds_per_token")
    table.add_row("tokens/s per user", f"{report['tokens_per_s']:,.1f}",
                  f"{1 / bound_rate:,.1f}" if bound_rate else "-")
    batch = report.get("batch", 1)
    table.add_row(f"aggregate tokens/s ({batch} user{'s' if batch > 1 else ''})",
                  f"{report.get('aggregate_tokens_per_s', report['tokens_per_s']):,.1f}",
                  f"{batch / bound_rate:,.1f}" if bound_rate else "-")
    if report["mode"] == "timing-only":
        table.add_row("decode steps timed", str(report["decode"]["steps"]), "")
    else:
        table.add_row("generated tokens", str(len(report["tokens"])), "")
    return table


def breakdown_table(report: dict) -> Table:
    """Where the time of one request goes: prefill, KV transfer, layout change, decode."""
    prefill, kv, decode = report["prefill"], report["kv_transfer"], report["decode"]
    table = Table(title="breakdown", title_justify="left")
    for name, justify in (("stage", "left"), ("machine", "left"), ("cycles", "right"),
                          ("time", "right"), ("bound", "right"), ("notes", "left")):
        table.add_column(name, justify=justify)
    table.add_row("prefill", report["hardware"]["prefill"], f"{prefill['cycles']:,}",
                  si_seconds(prefill["seconds"]), si_seconds(prefill.get("roofline_seconds")),
                  f"{report['prompt_len']} prompt tokens")
    overlap = "overlapped" if kv["overlapped"] else "serial"
    table.add_row("KV transfer", report["hardware"]["link"], "",
                  si_seconds(kv["seconds"]), si_seconds(kv.get("bound_seconds")),
                  f"{si_bytes(kv['bytes'])} {overlap}, "
                  f"exposed {si_seconds(kv['exposed_seconds'])}")
    table.add_row("KV layout on wafer", report["hardware"]["decode"],
                  f"{kv['layout_cycles']:,}", si_seconds(kv["layout_seconds"]), "",
                  "from the west edge")
    table.add_row("decode (per token)", report["hardware"]["decode"],
                  f"{decode['cycles_per_token']:,.0f}", si_seconds(decode["seconds_per_token"]),
                  si_seconds(decode.get("bound_seconds_per_token")),
                  f"{decode['steps']} steps, {decode['pes_used']:,} PEs")
    return table


def utilization_table(report: dict) -> Table:
    """Utilisation of both machines and SRAM occupancy of the wafer."""
    prefill, decode = report["prefill"], report["decode"]
    table = Table(title="utilisation and memory", title_justify="left")
    table.add_column("resource")
    table.add_column("value", justify="right")
    for engine, fraction in prefill.get("engine_utilization", {}).items():
        table.add_row(f"prefill {engine}", _percent(fraction))
    table.add_row("mesh PE busy (of used PEs x cycles)", _percent(decode.get("pe_utilization")))
    table.add_row("mesh link busy (of used links x cycles)",
                  _percent(decode.get("link_utilization")))
    sram = decode.get("sram", {})
    for key in ("weights_bytes", "kv_bytes", "scratch_bytes", "free_bytes"):
        if key in sram:
            table.add_row(f"wafer SRAM {key.removesuffix('_bytes')}", si_bytes(sram[key]))
    return table


def per_layer_table(report: dict) -> Table | None:
    """Cycles per layer on each machine, when the stages reported them."""
    prefill_layers = report["prefill"].get("per_layer_cycles") or []
    decode_layers = report["decode"].get("per_layer_cycles") or []
    if not prefill_layers and not decode_layers:
        return None
    table = Table(title="per layer (cycles)", title_justify="left")
    table.add_column("layer", justify="right")
    table.add_column("prefill", justify="right")
    table.add_column("decode step", justify="right")
    layers = range(max(len(prefill_layers), len(decode_layers)))
    rows = [tuple(f"{v[layer]:,}" if layer < len(v) else "-"
                  for v in (prefill_layers, decode_layers)) for layer in layers]
    for label, cells in collapse_runs([str(layer) for layer in layers], rows):
        table.add_row(label, *cells)
    return table


def phases_table(report: dict) -> Table | None:
    """One decode step by phase (from the marks) beside the critical-path bound's stages."""
    decode = report["decode"]
    phases = decode.get("phases")
    if not phases or not sum(phases.values()):
        return None
    bound = decode.get("bound_cycles_by_stage", {})
    table = Table(title=f"decode step by phase (cycles; max context "
                        f"{decode.get('max_context', 0):,} tokens)", title_justify="left")
    for name in ("phase", "emulated", "bound"):
        table.add_column(name, justify="left" if name == "phase" else "right")
    for name, cycles in phases.items():
        table.add_row(name, f"{cycles:,}", f"{bound[name]:,}" if name in bound else "-")
    table.add_row("total", f"{sum(phases.values()):,}",
                  f"{decode.get('bound_cycles_per_token', 0):,}")
    return table


def print_report(report: dict, console: Console | None = None) -> None:
    """Print every table of the report."""
    print_tables(console or output_console(), summary_table(report), breakdown_table(report),
                 utilization_table(report), phases_table(report), per_layer_table(report),
                 batch_sweep_table(report["batch_sweep"]) if "batch_sweep" in report else None)


def batch_sweep_table(points: list) -> Table:
    """`emu run --batch-sweep`: per-user and aggregate tokens/s for every batch size."""
    table = Table(title="batch sweep", title_justify="left")
    for name in ("batch", "tokens/s per user", "aggregate tokens/s", "time per token",
                 "max context per user"):
        table.add_column(name, justify="right")
    for p in points:
        if p["status"] != "ok":
            table.add_row(str(p["batch"]), "does not fit", "", "", "")
            continue
        table.add_row(str(p["batch"]), f"{p['tokens_per_s']:,.1f}",
                      f"{p['aggregate_tokens_per_s']:,.1f}", si_seconds(p["tpot_s"]),
                      f"{p['max_context']:,}")
    return table
