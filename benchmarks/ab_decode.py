"""In-process A/B of the functional decode step between revisions of this repository.

On a shared machine the time of a decode step moves by 20-30 % between runs (another
process's memory traffic), more than most changes to the engine are worth, so separate
processes (`bench_decode.py` run twice) cannot tell them apart. This script loads the
`emulator`, `compiler` and `isa` packages of each revision under renamed top-level names
(`emulator_r0`, ...) into one process, builds one `MeshDecoder` per revision (the
`bench_decode.py` model, mesh and dtype) and alternates their decode steps, so every
revision sees the same load. It prints min / first quartile / median seconds per step for
each revision and whether their logits are bit-identical.

The renamed copies live in ~/.cache/emu-ab/<revision> and are rewritten only when their
text changes, so Numba's cache of their kernels stays valid between runs (the first run
of a revision compiles its kernels, about a minute).

Usage: python benchmarks/ab_decode.py REV [REV ...] [--rounds 16] [--dtype fp16]
       [--mesh 64x64]
REV: a git revision of this repository (`main`, `HEAD~2`, a hash) or a directory holding
a checkout (its files as they are on disk).
"""

import argparse
import importlib
import io
import re
import subprocess
import sys
import tarfile
import time
from pathlib import Path

import numpy as np

PACKAGES = ("emulator", "compiler", "isa")
ROOT = Path(__file__).resolve().parent.parent
CACHE = Path.home() / ".cache" / "emu-ab"
PROMPT_LEN = 32


def parse_args():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("revisions", nargs="+")
    parser.add_argument("--rounds", type=int, default=16)
    parser.add_argument("--dtype", default="fp16", choices=["fp32", "fp16", "bf16"])
    parser.add_argument("--mesh", default="64x64")
    return parser.parse_args()


def package_files(revision: str) -> dict[str, bytes]:
    """{path: bytes} of the package files of a git revision or a checkout directory."""
    if Path(revision).is_dir():
        base = Path(revision)
        return {str(p.relative_to(base)): p.read_bytes() for name in PACKAGES
                for p in (base / name).rglob("*") if p.is_file() and "__pycache__" not in p.parts}
    archive = subprocess.run(["git", "-C", str(ROOT), "archive", "--format=tar", revision,
                              *PACKAGES], capture_output=True, check=True).stdout
    with tarfile.open(fileobj=io.BytesIO(archive)) as tar:
        return {m.name: tar.extractfile(m).read() for m in tar.getmembers() if m.isfile()}


def install(revision: str, suffix: str) -> Path:
    """Write the revision's packages renamed with `suffix`; return their directory."""
    target = CACHE / re.sub(r"[^A-Za-z0-9_.-]", "_", str(Path(revision).resolve())
                            if Path(revision).is_dir() else revision)
    pattern = re.compile(r"\b(" + "|".join(PACKAGES) + r")\b(?=[.\s,;:)\"'])")
    for path, data in package_files(revision).items():
        top, _, rest = path.partition("/")
        out = target / f"{top}{suffix}" / rest
        if path.endswith(".py"):
            data = pattern.sub(lambda m: m.group(1) + suffix, data.decode()).encode()
        if not out.exists() or out.read_bytes() != data:   # keep mtimes: Numba's cache
            out.parent.mkdir(parents=True, exist_ok=True)
            out.write_bytes(data)
    return target


def decoder(suffix: str, dtype: str, width: int, height: int):
    """A MeshDecoder of the revision installed as `suffix`, KV cache loaded, warmed up."""
    bench = importlib.import_module("bench_decode")
    ref = importlib.import_module(f"compiler{suffix}.reference")
    frontend = importlib.import_module(f"compiler{suffix}.frontend")
    weights = importlib.import_module(f"compiler{suffix}.weights")
    mesh = importlib.import_module(f"emulator{suffix}.hw.mesh").load_mesh("wse3")
    spec = frontend.parse_config(bench.CONFIG, "ab_decode")
    dec = importlib.import_module(f"compiler{suffix}.decode").MeshDecoder(
        spec, weights.random_weights(spec, 0), mesh.with_mesh(width, height), dtype=dtype,
        engine="numba", max_context=256)
    _, cache = ref.prefill(spec, dec.weights, list(range(1, PROMPT_LEN + 1)))
    dec.load_kv(cache)
    dec.step(PROMPT_LEN, PROMPT_LEN)
    return dec


def main():
    args = parse_args()
    width, height = (int(v) for v in args.mesh.lower().split("x"))
    sys.path.insert(0, str(ROOT / "benchmarks"))
    decoders = {}   # "r0 main" -> its decoder (a revision may be given twice)
    for i, revision in enumerate(args.revisions):
        sys.path.insert(0, str(install(revision, f"_r{i}")))
        decoders[f"r{i} {revision}"] = decoder(f"_r{i}", args.dtype, width, height)
    times = {revision: [] for revision in decoders}
    logits = {}
    for _ in range(args.rounds):
        for revision, dec in decoders.items():
            start = time.perf_counter()
            logits[revision], _ = dec.step(PROMPT_LEN, PROMPT_LEN + 1)
            times[revision].append(time.perf_counter() - start)
    first = next(iter(logits.values())).view(np.uint32)
    same = all(np.array_equal(v.view(np.uint32), first) for v in logits.values())
    print(f"logits bit-identical across revisions: {same}")
    for revision, t in times.items():
        print(f"{revision:>24}: min {min(t):.4f} s  q25 {np.quantile(t, 0.25):.4f} s  "
              f"median {np.median(t):.4f} s per step ({args.rounds} steps)")


if __name__ == "__main__":
    main()
