"""The options of `emu serve` as a library: parse and check them (one-line ConfigErrors
naming the option) and build the ServeRequest (`build_serve_request`); `serve_report` runs
the command with keyword options named like its long options and returns the report dict
(what `--report` writes), which `emu sweep` calls as the `serve` command."""

from pathlib import Path

from emulator.hw.errors import ConfigError

DEFAULT_MODEL = "tiny"


def positive_float(value, option: str) -> float | None:
    if value is None:
        return None
    try:
        x = float(value)
    except ValueError:
        x = -1.0
    if not x > 0 or x == float("inf"):
        raise ConfigError(f"{option}: must be a positive number, got '{value}'")
    return x


def positive_int(value, option: str, allow_zero: bool = False) -> int:
    try:
        x = int(str(value).replace("_", ""))
    except ValueError:
        x = -1
    if x < (0 if allow_zero else 1):
        raise ConfigError(f"{option}: must be a {'non-negative' if allow_zero else 'positive'} "
                          f"integer, got '{value}'")
    return x


def load_workload_options(workload, rate, requests, isl, osl, arrival, seed):
    """The Workload from --workload, or synthetic from --rate/--requests/--isl/--osl."""
    from emulator.serve.workload import load_workload, parse_arrival, parse_dist, synthetic

    synthetic_opts = {"--rate": rate, "--isl": isl, "--osl": osl}
    if workload:
        given = [k for k, v in synthetic_opts.items() if v is not None]
        if given:
            raise ConfigError(f"--workload excludes {', '.join(given)}")
        w = load_workload(workload)
        if requests is not None:
            w = w.head(positive_int(requests, "--requests"))
        return w
    missing = [k for k, v in {**synthetic_opts, "--requests": requests}.items() if v is None]
    if missing:
        raise ConfigError(f"give --workload FILE, or --rate, --requests, --isl and --osl "
                          f"(missing: {', '.join(missing)})")
    parse_arrival(arrival)
    return synthetic(positive_float(rate, "--rate"), positive_int(requests, "--requests"),
                     parse_dist(isl, "--isl"), parse_dist(osl, "--osl"), seed, arrival)


def parse_chips(text: str | None) -> list[int] | None:
    """--search-chips N,N,... -> sorted distinct positive integers."""
    if text is None:
        return None
    values = [positive_int(v, "--search-chips") for v in str(text).split(",") if v.strip()]
    if not values:
        raise ConfigError(f"--search-chips: expected N,N,..., got '{text}'")
    return sorted(set(values))


def parse_closed(text: str | None) -> tuple[int, float] | None:
    """--closed USERS[:THINK_S] -> (users, think seconds)."""
    if text is None:
        return None
    users, _, think = str(text).partition(":")
    return (positive_int(users, "--closed USERS"),
            0.0 if not think else float(think) if _nonneg(think) else
            positive_float(think, "--closed THINK_S"))


def _nonneg(text: str) -> bool:
    try:
        return float(text) >= 0 and float(text) != float("inf")
    except ValueError:
        return False


def auto_prefill_hw(spec, dtype: str, chips: int):
    """trn2, or trn3 when the model does not fit trn2's HBM (as `emu run --prefill-hw auto`)."""
    from emulator.hw.prefill import load_prefill
    from emulator.serve.costs import prefill_max_tokens

    for name in ("trn2", "trn3"):
        hw = load_prefill(name)
        if prefill_max_tokens(spec, hw, dtype, chips, 1) >= 1:
            return hw
    return hw


def build_serve_request(*, model=None, workload=None, rate=None, requests=None, isl=None,
                        osl=None, arrival="poisson", closed=None, prefill_hw="auto",
                        prefill_chips=1, prefill_instances=1, hw="small", mesh=None,
                        decode_instances=1, link="efa", overlap_kv=False, max_batch=1,
                        prefill_token_budget=0, dtype="bf16", slo_ttft=None, slo_tpot=None,
                        seed=0, baseline=False, baseline_instances=0, cache_dir=None,
                        no_cache=False, prefill_chunk=0):
    """The checked ServeRequest of `emu serve`'s options (presets by name, file or as
    loaded dataclasses)."""
    from compiler.frontend import resolve_model
    from emulator.hw.link import LinkConfig, load_link
    from emulator.hw.mesh import load_sized_mesh
    from emulator.hw.prefill import PrefillConfig, load_prefill
    from emulator.serve.costs import default_cache_dir
    from emulator.serve.runner import ServeRequest

    spec = resolve_model(model or DEFAULT_MODEL)
    name = str(model or DEFAULT_MODEL).rstrip("/").rsplit("/", 1)[-1].removesuffix(".json")
    w = load_workload_options(workload, rate, requests, isl, osl, arrival, seed)
    chips = positive_int(prefill_chips, "--prefill-chips")
    if isinstance(prefill_hw, PrefillConfig):
        chip = prefill_hw
    else:
        chip = (auto_prefill_hw(spec, dtype, chips) if prefill_hw == "auto"
                else load_prefill(prefill_hw))
    return ServeRequest(
        spec=spec, model_name=name, workload=w, prefill_hw=chip,
        mesh=load_sized_mesh(hw, mesh),
        link=link if isinstance(link, LinkConfig) else load_link(link), prefill_chips=chips,
        prefill_instances=positive_int(prefill_instances, "--prefill-instances"),
        decode_instances=positive_int(decode_instances, "--decode-instances"),
        max_batch=positive_int(max_batch, "--max-batch"),
        prefill_token_budget=positive_int(prefill_token_budget, "--prefill-token-budget",
                                          allow_zero=True),
        dtype=dtype, slo_ttft=positive_float(slo_ttft, "--slo-ttft"),
        slo_tpot=positive_float(slo_tpot, "--slo-tpot"), baseline=baseline,
        baseline_instances=positive_int(baseline_instances, "--baseline-instances",
                                        allow_zero=True),
        cache_dir=None if no_cache else Path(cache_dir) if cache_dir else default_cache_dir(),
        closed=parse_closed(closed), seed=seed, overlap_kv=overlap_kv,
        prefill_chunk=positive_int(prefill_chunk or 0, "--prefill-chunk", allow_zero=True))


def serve_report(*, model=None, workload=None, rate=None, requests=None, isl=None, osl=None,
                 arrival="poisson", closed=None, prefill_hw="auto", prefill_chips=1,
                 prefill_instances=1, hw="small", mesh=None, decode_instances=1, link="efa",
                 overlap_kv=False, max_batch=1, prefill_token_budget=0, dtype="bf16",
                 slo_ttft=None, slo_tpot=None, seed=0, baseline=False, baseline_instances=0,
                 cache_dir=None, no_cache=False, search=False, max_instances=8,
                 search_chips=None, objective="usd", prefill_chunk=0) -> dict:
    """`emu serve` as a function (the sweep's `serve` command): its long options as keyword
    arguments; returns the report dict."""
    from emulator.serve.runner import run_serve

    req = build_serve_request(
        model=model, workload=workload, rate=rate, requests=requests, isl=isl, osl=osl,
        arrival=arrival, closed=closed, prefill_hw=prefill_hw, prefill_chips=prefill_chips,
        prefill_instances=prefill_instances, hw=hw, mesh=mesh,
        decode_instances=decode_instances, link=link, overlap_kv=overlap_kv,
        max_batch=max_batch, prefill_token_budget=prefill_token_budget, dtype=dtype,
        slo_ttft=slo_ttft, slo_tpot=slo_tpot, seed=seed, baseline=baseline,
        baseline_instances=baseline_instances, cache_dir=cache_dir, no_cache=no_cache,
        prefill_chunk=prefill_chunk)
    if not search:
        return run_serve(req).report
    from emulator.serve.search import run_search

    result = run_search(req, positive_int(max_instances, "--max-instances"), objective, None,
                        parse_chips(search_chips))
    report = result.best.report
    report["search"] = result.to_dict()
    return report
