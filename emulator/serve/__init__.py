"""Serving at scale: a discrete-event (SimPy) simulation of a disaggregated cluster.

- `workload`: request streams (trace files, synthetic arrivals, ISL/OSL distributions);
- `costs`: the cost model (emulator measurements, cached and interpolated; injectable);
- `sim`: the SimPy processes and the scheduling policies;
- `report`: metrics, the report dict and its tables; `plots`, `trace`: pictures, Perfetto;
- `runner`: `emu serve` as a library call; `search`: prefill:decode ratio search.
docs/serving.md describes the model.
"""
