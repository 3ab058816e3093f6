"""emu's mini-compiler: from a HuggingFace `config.json` (+ `.safetensors`) to machine programs.

Stages (DESIGN.md section 4), each a pure function from one IR to the next:

- `compiler.frontend`  — `config.json` -> `ModelSpec` (parse + validate, both RoPE forms)
- `compiler.weights`   — `.safetensors` <-> `dict[str, np.ndarray]` (checked against a spec)
- `compiler.reference` — the independent numpy fp32 forward pass, the oracle for every test
- `compiler.numerics`  — fp16/bf16 storage rounding helpers
"""
