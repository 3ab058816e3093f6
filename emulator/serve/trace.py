"""Perfetto trace of an `emu serve` run: one process (track group) per instance, a slice per
request phase.

- `prefill instance k`: one slice per prefill batch (its requests in the args);
- `link into decode j`: one slice per KV transfer (transfer + latency + layout), on lanes
  so that concurrent transfers do not overlap on one track;
- `decode instance j`: one slice per request's decode phase, one lane per batch slot.
Only the first MAX_REQUESTS requests are drawn (a trace of millions of slices does not
open). Times are seconds in the API, microseconds in the file.
"""

import numpy as np

from emulator.serve.sim import DONE
from emulator.views.trace import TraceBuilder

MAX_REQUESTS = 20_000


def lanes(starts: np.ndarray, ends: np.ndarray) -> np.ndarray:
    """Greedy interval partitioning: a lane per interval so that none overlap in a lane."""
    order = np.argsort(starts, kind="stable")
    lane_end, out = [], np.zeros(starts.size, np.int64)
    for i in order:
        for k, end in enumerate(lane_end):
            if end <= starts[i]:
                lane_end[k] = ends[i]
                out[i] = k
                break
        else:
            out[i] = len(lane_end)
            lane_end.append(ends[i])
    return out


def build_trace(sim, limit: int = MAX_REQUESTS) -> TraceBuilder:
    """The trace of a finished Simulation."""
    rec, w = sim.rec, sim.w
    n = min(limit, len(w))
    trace = TraceBuilder()
    done = rec.status[:n] == DONE
    colocated = sim.cluster.colocated
    # prefill batches: requests sharing an instance and a start time
    idx = np.nonzero(done)[0]
    batches = {}
    for i in idx:
        batches.setdefault((int(rec.prefill_instance[i]), float(rec.prefill_start[i])),
                           []).append(int(i))
    for (k, start), members in sorted(batches.items()):
        end = float(rec.prefill_end[members[0]])
        name = f"prefill r{members[0]}" + (f" +{len(members) - 1}" if len(members) > 1 else "")
        trace.add_slice(f"{'instance' if colocated else 'prefill instance'} {k}", "prefill",
                        name, start, end - start,
                        {"requests": members,
                         "prompt_tokens": int(w.prompt_tokens[members].sum())})
    dec = idx[w.output_tokens[idx] > 1]
    for j in sorted({int(rec.decode_instance[i]) for i in dec}):
        mine = dec[rec.decode_instance[dec] == j]
        if not colocated:
            ts, te = rec.transfer_start[mine], rec.transfer_end[mine]
            for i, lane in zip(mine, lanes(ts, te), strict=True):
                trace.add_slice(f"link into decode {j}", f"lane {lane}", f"KV r{i}",
                                float(rec.transfer_start[i]),
                                float(rec.transfer_end[i] - rec.transfer_start[i]),
                                {"request": int(i), "bytes": sim.costs.kv_bytes(
                                    int(w.prompt_tokens[i]))})
        ds, de = rec.decode_start[mine], rec.finish[mine]
        proc = f"instance {j}" if colocated else f"decode instance {j}"
        for i, lane in zip(mine, lanes(ds, de), strict=True):
            trace.add_slice(proc, f"slot {lane}", f"decode r{i}", float(rec.decode_start[i]),
                            float(rec.finish[i] - rec.decode_start[i]),
                            {"request": int(i), "prompt_tokens": int(w.prompt_tokens[i]),
                             "output_tokens": int(w.output_tokens[i])})
    return trace
