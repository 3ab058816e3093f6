"""Test-suite settings: every compiler pass's output is verified as it is produced
(compiler.decode.run_pass under EMU_VERIFY, the spec flag of docs/architecture.md)."""

import os

os.environ.setdefault("EMU_VERIFY", "1")
