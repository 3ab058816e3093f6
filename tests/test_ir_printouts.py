"""Golden printouts of the compiler's IRs (compiler/printing.py): the tile plan, placement
and routes of small models compared whole with tests/golden/*.txt, so any change to a pass
shows as a diff of readable text. After an intended change, regenerate with
`EMU_UPDATE_GOLDEN=1 python -m pytest tests/test_ir_printouts.py` and read the diff."""

import os
from pathlib import Path

import numpy as np
import pytest

from compiler.decode import compile_decode
from compiler.frontend import resolve_model
from compiler.printing import compiled_text, to_sexpr
from compiler.tile import Chunking
from emulator.hw.mesh import load_mesh

GOLDEN = Path(__file__).parent / "golden"
CASES = {"tiny-8x6-bf16": ("tiny", (8, 6), "bf16"),
         "tiny-gqa-12x10-fp32": ("tiny-gqa", (12, 10), "fp32")}


@pytest.mark.parametrize("case", list(CASES))
def test_compiled_printout_matches_golden(case):
    model, mesh_size, dtype = CASES[case]
    mesh = load_mesh("small").with_mesh(*mesh_size)
    text = compiled_text(compile_decode(resolve_model(model), mesh, dtype))
    path = GOLDEN / f"{case}.txt"
    if os.environ.get("EMU_UPDATE_GOLDEN"):
        path.write_text(text)
    assert text == path.read_text()


def test_printout_forms():
    assert to_sexpr(Chunking("R", (0, 4, 8))) == "(chunking axis=R bounds=(0 4 8))"
    assert to_sexpr(np.arange(3, dtype=np.int32)) == "(array int32 3 0 1 2)"
    assert "sha1:" in to_sexpr(np.zeros(100))
    assert to_sexpr({(1, 2): 3}) == "(map (1 2)=3)"
