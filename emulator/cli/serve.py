"""`emu serve`: a disaggregated serving cluster under a request stream (emulator/serve/).

Thin: parse and check the options, call `emulator.serve.runner.run_serve` (or the search),
print the summary; the outputs are declared (checked) before any work and committed together
at the end (emulator/outputs.py). docs/serving.md describes the model and the report.
"""

import click
from rich.console import Console

from emulator.views.tables import output_console, print_tables


@click.command("serve")
@click.argument("config", required=False)
@click.option("--workload", type=click.Path(dir_okay=False),
              help="Trace file (JSONL or CSV; emu, Azure or BurstGPT columns).")
@click.option("--rate", metavar="R", help="Synthetic arrivals: requests per second.")
@click.option("--requests", metavar="N", help="Synthetic: requests (with --workload: the first N).")
@click.option("--isl", metavar="DIST",
              help="Prompt lengths (tokens): N, uniform:LO,HI, lognormal:MEDIAN,SIGMA, "
                   "zipf:A,HI, file:PATH[:COLUMN].")
@click.option("--osl", metavar="DIST",
              help="Output lengths (tokens, the first included; forms as --isl).")
@click.option("--arrival", default="poisson", show_default=True, metavar="poisson|gamma:CV",
              help="Synthetic arrival process: poisson or gamma:CV.")
@click.option("--closed", metavar="USERS[:THINK_S]",
              help="Closed system: USERS clients, each sending its next request THINK_S "
                   "seconds (exponential, mean) after the last one ended (the workload's "
                   "arrival times are ignored; its lengths are used in order).")
@click.option("--prefill-hw", default="auto", show_default=True, metavar="NAME|FILE",
              help="Prefill chip preset or JSON file; auto: trn2, or trn3 if the model "
                   "does not fit trn2.")
@click.option("--prefill-chips", default="1", show_default=True, metavar="N",
              help="Chips per prefill instance.")
@click.option("--prefill-instances", default="1", show_default=True, metavar="P",
              help="Prefill instances.")
@click.option("--hw", default="small", show_default=True, metavar="NAME|FILE",
              help="Decode preset (wse3, cs3x4, small) or JSON file.")
@click.option("--mesh", "mesh_size", metavar="WxH",
              help="Override the decode mesh size (PEs).")
@click.option("--decode-instances", default="1", show_default=True, metavar="D",
              help="Decode instances (each: the preset's wafers).")
@click.option("--link", default="efa", show_default=True, metavar="NAME|FILE",
              help="Link preset or JSON file (one prefill chip's egress).")
@click.option("--overlap-kv", is_flag=True,
              help="Stream each layer's KV while the prefill runs (when admitted at its start).")
@click.option("--max-batch", default="1", show_default=True, metavar="B",
              help="Users per decode instance (> 1 uses the documented batch hook).")
@click.option("--prefill-token-budget", default="0", show_default=True, metavar="TOKENS",
              help="Prompt tokens per prefill batch (0: the longest prompt that fits).")
@click.option("--prefill-chunk", default="0", show_default=True, metavar="TOKENS",
              help="Chunked prefill: tokens per chunk (0: whole prompts); the token budget "
                   "defaults to one chunk.")
@click.option("--dtype", default="bf16", show_default=True,
              type=click.Choice(["fp32", "fp16", "bf16"]),
              help="Storage format of weights and KV cache.")
@click.option("--slo-ttft", metavar="SECONDS", help="Time-to-first-token objective.")
@click.option("--slo-tpot", metavar="SECONDS", help="Time-per-output-token objective.")
@click.option("--seed", default=0, show_default=True, type=int, help="Seed of the arrivals.")
@click.option("--baseline", is_flag=True,
              help="Also simulate both phases on the prefill chips (equal price per hour).")
@click.option("--baseline-instances", default="0", show_default=True, metavar="N",
              help="Baseline instances (0: as many as cost the same per hour).")
@click.option("--search", is_flag=True,
              help="Search prefill:decode instance counts for the best goodput per dollar.")
@click.option("--max-instances", default="8", show_default=True, metavar="N",
              help="--search: largest P and D tried.")
@click.option("--search-chips", metavar="N,N,...",
              help="--search: prefill chip counts per instance to try (default: "
                   "--prefill-chips).")
@click.option("--objective", default="usd", show_default=True,
              type=click.Choice(["usd", "chip"]), help="--search: goodput per dollar or chip.")
@click.option("--cache-dir", type=click.Path(file_okay=False),
              help="Cost cache folder (default $EMU_CACHE_DIR or ~/.cache/emu).")
@click.option("--no-cache", is_flag=True, help="Measure costs without reading or writing a cache.")
@click.option("--report", "report_path", metavar="FILE|-",
              help="Write the report as JSON ('-': stdout).")
@click.option("--plots", "plots_dir", type=click.Path(file_okay=False),
              help="Write PNG charts into this folder.")
@click.option("--trace", "trace_path", type=click.Path(dir_okay=False),
              help="Write a Perfetto trace (JSON).")
@click.option("--quiet", is_flag=True, help="Print no tables.")
def serve_command(config, workload, rate, requests, isl, osl, arrival, closed, prefill_hw,
                  prefill_chips, prefill_instances, hw, mesh_size, decode_instances, link,
                  overlap_kv, max_batch,
                  prefill_token_budget, prefill_chunk, dtype, slo_ttft, slo_tpot, seed, baseline,
                  baseline_instances, search, max_instances, search_chips, objective,
                  cache_dir, no_cache, report_path, plots_dir, trace_path, quiet):
    """Simulate a disaggregated serving cluster (prefill pool, decode wafers, links)."""
    from emulator.outputs import Outputs
    from emulator.serve.options import build_serve_request, parse_chips, positive_int
    from emulator.serve.plots import PLOT_NAMES
    from emulator.serve.report import summary_tables
    from emulator.serve.runner import run_serve

    outputs = Outputs()
    report_file = outputs.file(report_path, "--report")
    trace_file = outputs.file(trace_path, "--trace")
    plots = outputs.directory(plots_dir, "--plots",
                              PLOT_NAMES + (("search.png",) if search else ()))
    req = build_serve_request(
        model=config, workload=workload, rate=rate, requests=requests, isl=isl, osl=osl,
        arrival=arrival, closed=closed, prefill_hw=prefill_hw, prefill_chips=prefill_chips,
        prefill_instances=prefill_instances, hw=hw, mesh=mesh_size,
        decode_instances=decode_instances, link=link, overlap_kv=overlap_kv,
        max_batch=max_batch, prefill_token_budget=prefill_token_budget, dtype=dtype,
        slo_ttft=slo_ttft, slo_tpot=slo_tpot, seed=seed, baseline=baseline,
        baseline_instances=baseline_instances, cache_dir=cache_dir, no_cache=no_cache,
        prefill_chunk=prefill_chunk)
    limit = positive_int(max_instances, "--max-instances")
    console = Console(stderr=True)
    out = output_console(stderr=outputs.uses_stdout)
    with console.status("emu serve: measuring costs and simulating") as status:
        def progress(what, done, total):
            status.update(f"emu serve: measuring costs: {what} ({done + 1}/{total})")
        if search:
            from emulator.serve.search import run_search, search_tables

            result = run_search(req, limit, objective, progress,
                                parse_chips(search_chips))
            outcome = result.best
            outcome.report["search"] = result.to_dict()
        else:
            outcome = run_serve(req, progress)
    report = outcome.report
    if plots is not None:
        from emulator.serve.plots import render_plots

        for name, data in render_plots(outcome, report.get("search")).items():
            outputs.write_bytes(outputs.in_folder(plots, name), data)
    if trace_file is not None:
        from emulator.serve.trace import build_trace

        outputs.write_json(trace_file, build_trace(outcome.sim).to_dict())
    outputs.write_json(report_file, report)
    outputs.commit()
    if not quiet:
        if search:
            print_tables(out, *search_tables(report["search"]))
        print_tables(out, *summary_tables(report))
        if report.get("baseline"):
            from emulator.serve.report import baseline_table

            print_tables(out, baseline_table(report))


COMMANDS = [serve_command]
