"""The kernels compile through Triton's real GPU pipeline (sm_90 PTX + cubin), without a GPU.

The interpreter tests never run the compiler; this catches kernels that interpret fine but
do not compile, and pins the code generation that matters for speed (16-byte global loads,
Hopper wgmma for the bf16 forward). Runs in a subprocess: TRITON_INTERPRET must be unset
before triton is imported.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.kernels

ROOT = Path(__file__).resolve().parents[3]
SCRIPT = """
import json
from sparse_ops.kernels.triton_aot import compile_variants
rows = compile_variants(arch=90)
print(json.dumps([dict(r, variant=vars(r["variant"])) for r in rows]))
"""


def test_all_kernel_variants_compile_for_sm90():
    pytest.importorskip("triton")
    pytest.importorskip("triton.backends.nvidia")
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    proc = subprocess.run([sys.executable, "-c", SCRIPT], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = json.loads(proc.stdout.strip().splitlines()[-1])
    assert len(rows) == 11 and all(r["cubin"] for r in rows)
    assert all(r["max_copy_bytes"] == 16 for r in rows)  # vectorised 16-byte async copies
    fwd16 = next(r for r in rows if r["variant"]["kernel"] == "dsd" and r["variant"]["block_size"] == 16
                 and r["variant"]["dtype"] == "bf16" and r["variant"]["trans_v"])
    assert fwd16["wgmma"]
    assert all(r["mma"] for r in rows if r["variant"]["dtype"] != "fp32")
