"""Host resource guards: the memory a run may use, checked before its big arrays exist.

`check_memory(need, what)` raises `ResourceError` (one line, exit 2) when `need` bytes
exceed the limit, naming both, instead of a late MemoryError or the kernel's
out-of-memory kill. The limit is `EMU_MEMORY_LIMIT` when set (bytes, or with a suffix:
`512M`, `8G`, `1.5GiB`), else the memory the machine has available now (MemAvailable of
/proc/meminfo; physical memory where that is unknown). Estimates are of the arrays a
command allocates (docs/reliability.md lists them); they are upper bounds to within a small
factor, never exact RSS. Units: bytes.
"""

import math
import os
import re

from emulator.hw.errors import ConfigError, ResourceError

ENV_MEMORY = "EMU_MEMORY_LIMIT"
_UNITS = {"": 1, "k": 10**3, "m": 10**6, "g": 10**9, "t": 10**12,
          "ki": 2**10, "mi": 2**20, "gi": 2**30, "ti": 2**40}


def parse_bytes(text: str, what: str = ENV_MEMORY) -> int:
    """'8G', '512MiB', '1e9', '123' -> bytes; ConfigError naming `what` when malformed."""
    match = re.fullmatch(r"\s*([0-9]*\.?[0-9]+(?:[eE][0-9]+)?)\s*([kKmMgGtT]i?)?[bB]?\s*",
                         str(text))
    if not match:
        raise ConfigError(f"{what}: expected a size in bytes such as 8G or 512MiB, "
                          f"got '{text}'")
    value = float(match.group(1)) * _UNITS[(match.group(2) or "").lower()]
    if not math.isfinite(value) or value < 1:
        raise ConfigError(f"{what}: expected a positive size in bytes, got '{text}'")
    return int(value)


def available_memory() -> int:
    """Bytes of memory available to a new allocation now (MemAvailable), else physical."""
    try:
        with open("/proc/meminfo", encoding="ascii") as handle:
            for line in handle:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return 2**40


def memory_limit() -> int:
    """The byte limit in force: EMU_MEMORY_LIMIT, else the available memory."""
    text = os.environ.get(ENV_MEMORY)
    if text:
        return parse_bytes(text)
    return available_memory()


def si(count: float) -> str:
    """1234567890 -> '1.23 GB' (bytes in SI units, three significant digits)."""
    for unit, scale in (("TB", 1e12), ("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if count >= scale:
            return f"{count / scale:.3g} {unit}"
    return f"{int(count)} B"


def check_memory(need: int, what: str) -> None:
    """Refuse (ResourceError) when `need` bytes for `what` exceed the memory limit."""
    limit = memory_limit()
    if need > limit:
        source = (f"{ENV_MEMORY}={os.environ[ENV_MEMORY]}" if os.environ.get(ENV_MEMORY)
                  else "the memory available on this machine")
        raise ResourceError(f"{what} needs about {si(need)} ({need:,} bytes) of host memory, "
                            f"more than the limit of {si(limit)} ({limit:,} bytes: {source}; "
                            f"set {ENV_MEMORY} to change it)")


# Host bytes per PE of mapping a model onto a mesh (tile, place, route, emit: the per-PE
# region, parameter and router tables). Measured with tracemalloc for `tiny` at
# 64x64 / 128x128 / 256x256 PEs: 268 / 166 / 122 B per PE; this bound is twice the largest.
COMPILE_BYTES_PER_PE = 512


def check_mapping_memory(mesh) -> None:
    """ResourceError when mapping a model onto `mesh` (a MeshConfig) would not fit."""
    check_memory(mesh.num_pes * COMPILE_BYTES_PER_PE,
                 f"mapping onto a {mesh.width}x{mesh.height} mesh")
