"""Chrome / Perfetto trace-event files (`{"traceEvents": [...]}`), which ui.perfetto.dev opens.

A trace has processes (one per machine: the prefill chip, each wafer, the link) and threads
(engines or mesh regions). Slices are complete events (`"ph": "X"`) with times in
microseconds; names of processes and threads are metadata events (`"ph": "M"`).
"""

from dataclasses import dataclass, field

from emulator.files import atomic_write_json

REQUIRED_SLICE_KEYS = ("name", "ph", "ts", "dur", "pid", "tid")


@dataclass
class TraceBuilder:
    """Collects named processes/threads and slices, then writes one trace file."""

    events: list = field(default_factory=list)
    _pids: dict = field(default_factory=dict)
    _tids: dict = field(default_factory=dict)

    def process(self, name: str) -> int:
        """The pid for a process name, created (with its name event) on first use."""
        if name not in self._pids:
            pid = len(self._pids) + 1
            self._pids[name] = pid
            self.events.append({"name": "process_name", "ph": "M", "pid": pid, "tid": 0,
                                "args": {"name": name}})
            self.events.append({"name": "process_sort_index", "ph": "M", "pid": pid,
                                "tid": 0, "args": {"sort_index": pid}})
        return self._pids[name]

    def thread(self, process: str, name: str) -> tuple[int, int]:
        """(pid, tid) of a thread inside a process, created on first use."""
        pid = self.process(process)
        key = (pid, name)
        if key not in self._tids:
            tid = sum(1 for p, _ in self._tids if p == pid) + 1
            self._tids[key] = tid
            self.events.append({"name": "thread_name", "ph": "M", "pid": pid, "tid": tid,
                                "args": {"name": name}})
        return pid, self._tids[key]

    def add_slice(self, process: str, thread: str, name: str, start_s: float,
                  duration_s: float, args: dict | None = None) -> None:
        """Add one complete event; times in seconds (stored as microseconds)."""
        pid, tid = self.thread(process, thread)
        self.events.append({"name": name, "ph": "X", "ts": start_s * 1e6,
                            "dur": max(duration_s, 0.0) * 1e6, "pid": pid, "tid": tid,
                            "args": args or {}})

    def to_dict(self) -> dict:
        """The trace as a JSON-ready object."""
        return {"traceEvents": self.events, "displayTimeUnit": "ns"}

    def write(self, path) -> None:
        """Write the trace atomically."""
        atomic_write_json(path, self.to_dict())


def validate_trace(obj) -> list[str]:
    """Problems that would stop Perfetto from reading `obj` (empty list when valid)."""
    if not isinstance(obj, dict) or not isinstance(obj.get("traceEvents"), list):
        return ["top level must be an object with a 'traceEvents' list"]
    problems = []
    named = {(e.get("pid"), e.get("tid")) for e in obj["traceEvents"]
             if e.get("ph") == "M" and e.get("name") == "thread_name"}
    for index, event in enumerate(obj["traceEvents"]):
        if event.get("ph") != "X":
            continue
        missing = [k for k in REQUIRED_SLICE_KEYS if k not in event]
        if missing:
            problems.append(f"event {index}: missing {', '.join(missing)}")
        elif not (isinstance(event["ts"], (int, float)) and event["dur"] >= 0):
            problems.append(f"event {index}: ts must be a number and dur >= 0")
        elif (event["pid"], event["tid"]) not in named:
            problems.append(f"event {index}: thread {event['pid']}/{event['tid']} has no name")
    return problems
