"""The Perfetto trace writer produces the trace-event schema and writes atomically."""

import json

from emulator.views.trace import TraceBuilder, validate_trace


def test_trace_schema(tmp_path):
    trace = TraceBuilder()
    trace.add_slice("prefill chip", "TensorE", "layer 0 qkv", 0.0, 1e-6, {"cycles": 2400})
    trace.add_slice("wafer 0", "decode", "token 1", 2e-6, 3e-6)
    trace.add_slice("prefill chip", "DMA", "load", 0.5e-6, 1e-6)
    path = tmp_path / "t.json"
    trace.write(path)
    obj = json.loads(path.read_text())
    assert validate_trace(obj) == []
    slices = [e for e in obj["traceEvents"] if e["ph"] == "X"]
    assert [s["name"] for s in slices] == ["layer 0 qkv", "token 1", "load"]
    assert slices[0]["dur"] == 1.0 and slices[1]["ts"] == 2.0
    assert slices[0]["pid"] == slices[2]["pid"] != slices[1]["pid"]
    assert slices[0]["tid"] != slices[2]["tid"]


def test_validate_trace_finds_problems():
    assert validate_trace([]) != []
    bad = {"traceEvents": [{"name": "x", "ph": "X", "ts": 0, "pid": 1, "tid": 1}]}
    assert "missing dur" in validate_trace(bad)[0]
