"""emu: an emulator of disaggregated LLM inference (systolic prefill, wafer-scale mesh decode).

Subpackages: `emulator.hw` (hardware presets), the mesh engines, the prefill model,
orchestration, reports and the `emu` command line.
"""

__version__ = "0.1.0"
