"""The PE instruction set of the decode mesh: opcodes, program arrays, assembler and the
reference interpreter that defines semantics and timing (docs/isa.md, docs/timing.md)."""
