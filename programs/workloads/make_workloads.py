"""Regenerate the bundled serving workloads (emu serve --workload programs/workloads/X.jsonl).

Project-made synthetic streams with documented shapes (docs/serving.md, "Workloads"); each
is deterministic (fixed seed). Lengths are clipped to [1, cap].

    python programs/workloads/make_workloads.py
"""

import json
from pathlib import Path

import numpy as np

from emulator.serve.workload import parse_dist, synthetic

# name: (requests, rate req/s, arrival, isl DIST, isl cap, osl DIST, osl cap, seed)
SHAPES = {
    "chat": (1000, 4.0, "poisson", "lognormal:400,0.9", 4096, "lognormal:220,0.7", 1024, 1),
    "summarise": (400, 1.0, "poisson", "lognormal:3000,0.5", 16384, "lognormal:180,0.5", 1024,
                  2),
    "agentic": (400, 0.3, "gamma:2.5", "lognormal:8000,0.6", 32768, "lognormal:90,0.8", 2048, 3),
}


def main() -> None:
    here = Path(__file__).resolve().parent
    for name, (n, rate, arrival, isl, icap, osl, ocap, seed) in SHAPES.items():
        w = synthetic(rate, n, parse_dist(isl), parse_dist(osl, "--osl"), seed, arrival)
        prompts = np.clip(w.prompt_tokens, 1, icap)
        outputs = np.clip(w.output_tokens, 1, ocap)
        lines = [json.dumps({"arrival_s": round(float(a), 6), "prompt_tokens": int(p),
                             "output_tokens": int(o)})
                 for a, p, o in zip(w.arrival_s, prompts, outputs, strict=True)]
        (here / f"{name}.jsonl").write_text("\n".join(lines) + "\n")
        print(f"{name}: {n} requests, median prompt {int(np.median(prompts))}, "
              f"median output {int(np.median(outputs))}")


if __name__ == "__main__":
    main()
