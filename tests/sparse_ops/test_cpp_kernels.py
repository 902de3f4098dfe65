"""Issue 19: the C++ CPU kernels (``cpp`` backend) against the reference, their fallback,
and ``auto`` deciding by measurement."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from sparse_ops import kernels
from sparse_ops.format import BlockSparseMatrix
from sparse_ops.kernels import autotune, cpp, cpp_build
from sparse_ops.linear import SparseLinear
from sparse_ops.ops import (dense_forward_reference, dense_grad_input_reference,
                            dense_grad_values_reference, sparse_forward, sparse_grad_input,
                            sparse_grad_values)

CPU = torch.device("cpu")
ROOT = Path(__file__).resolve().parents[2]


def _isas(ext) -> list[int]:
    """Instruction-set paths to test: AVX2 (1) always, AVX-512 (2) where the CPU has it."""
    return [1, 2] if ext.isa() == "avx512" else [1]


def _matrix(O: int, I: int, B: int, blocks: list[tuple[int, int]], seed: int = 0) -> BlockSparseMatrix:
    g = torch.Generator().manual_seed(seed)
    blocks = sorted(blocks, key=lambda rc: rc[0] * (I // B) + rc[1])
    rows = torch.tensor([r for r, _ in blocks], dtype=torch.int32)
    cols = torch.tensor([c for _, c in blocks], dtype=torch.int32)
    return BlockSparseMatrix(torch.randn(len(blocks), B, B, generator=g), rows, cols, (O, I), B, {})


def _check(w: BlockSparseMatrix, n: int, seed: int = 1) -> None:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, w.shape[1], generator=g)
    dy = torch.randn(n, w.shape[0], generator=g)
    bias = torch.randn(w.shape[0], generator=g)
    tol = dict(rtol=1e-5, atol=1e-4)
    torch.testing.assert_close(sparse_forward(x, w, "cpp"), dense_forward_reference(x, w), **tol)
    torch.testing.assert_close(sparse_forward(x, w, "cpp", bias), dense_forward_reference(x, w) + bias, **tol)
    torch.testing.assert_close(sparse_grad_input(dy, w, "cpp"), dense_grad_input_reference(dy, w), **tol)
    torch.testing.assert_close(sparse_grad_values(dy, x, w, "cpp"), dense_grad_values_reference(dy, x, w), **tol)


@pytest.mark.parametrize("B", cpp.BLOCK_SIZES)
def test_products_match_reference_on_odd_shapes_and_token_counts(ext, B: int) -> None:
    for level in _isas(ext):
        ext.force_isa(level)
        for seed, (O, I) in enumerate(((B, B), (3 * B, 5 * B), (7 * B, 2 * B), (48 * B // 8, 24 * B // 8))):
            w = BlockSparseMatrix.random((O, I), B, 0.3, torch.Generator().manual_seed(seed))
            w.values.normal_(generator=torch.Generator().manual_seed(seed))
            w.cache = {}
            for n in (1, 5, 6, 13, 14, 15, 29, 48, 49, 100):  # below, at and past a tile (6 / 12 / 14 / 48)
                _check(w, n, seed + n)


@pytest.mark.parametrize("B", cpp.BLOCK_SIZES)
def test_empty_rows_and_columns_density_one_and_zero_tokens(ext, B: int) -> None:
    for level in _isas(ext):
        ext.force_isa(level)
        # block row 1 and block column 0 empty; one lone block
        _check(_matrix(4 * B, 3 * B, B, [(0, 1), (0, 2), (2, 2), (3, 1)]), 17)
        _check(_matrix(2 * B, 2 * B, B, [(1, 1)]), 9)
        full = [(r, c) for r in range(3) for c in range(4)]                  # density 1
        _check(_matrix(3 * B, 4 * B, B, full), 31)
        w = _matrix(2 * B, 2 * B, B, [(0, 0)])
        assert sparse_forward(torch.randn(0, 2 * B), w, "cpp").shape == (0, 2 * B)
        assert sparse_grad_values(torch.randn(0, 2 * B), torch.randn(0, 2 * B), w, "cpp").abs().sum() == 0


def test_no_blocks_gives_zero_output_and_empty_gradient(ext) -> None:
    w = BlockSparseMatrix(torch.zeros(0, 16, 16), torch.zeros(0, dtype=torch.int32),
                          torch.zeros(0, dtype=torch.int32), (32, 48), 16, {})
    x = torch.randn(7, 48)
    assert torch.equal(sparse_forward(x, w, "cpp"), torch.zeros(7, 32))
    assert torch.equal(sparse_grad_input(torch.randn(7, 32), w, "cpp"), torch.zeros(7, 48))
    assert sparse_grad_values(torch.randn(7, 32), x, w, "cpp").shape == (0, 16, 16)


@pytest.mark.parametrize("B", cpp.BLOCK_SIZES)
def test_autograd_through_sparse_linear_and_a_pattern_update(ext, B: int) -> None:
    torch.manual_seed(0)
    layer = SparseLinear(4 * B, 3 * B, sparsity=0.5, block_size=B, backend="cpp", seed=0)
    ref = SparseLinear(4 * B, 3 * B, sparsity=0.5, block_size=B, backend="reference", seed=0)
    x = torch.randn(2, 11, 4 * B)
    for update in range(2):
        xs, xr = x.clone().requires_grad_(True), x.clone().requires_grad_(True)
        (layer(xs) ** 2).sum().backward()
        (ref(xr) ** 2).sum().backward()
        torch.testing.assert_close(xs.grad, xr.grad, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(layer.values.grad, ref.values.grad, rtol=1e-5, atol=1e-4)
        torch.testing.assert_close(layer.bias.grad, ref.bias.grad)
        # a new pattern between calls: the cached CSR / CSC indices must be rebuilt
        g = torch.Generator().manual_seed(10 + update)
        new = BlockSparseMatrix.random((3 * B, 4 * B), B, 0.5, g)
        for m in (layer, ref):
            m.set_pattern(new.rows, new.cols, new.values.clone())
            m.values.grad = None
            m.bias.grad = None


def test_unsupported_dtype_block_size_or_device_is_not_claimed(ext) -> None:
    be = kernels.get_backend("cpp")
    assert be.supports(CPU, torch.float32, 16) and be.supports(CPU, torch.float32, 8)
    assert be.supports(CPU, torch.bfloat16, 16) == bool(ext.amx())   # bf16: AMX only
    assert not be.supports(CPU, torch.bfloat16, 8) and not be.supports(CPU, torch.float16, 16)
    assert not be.supports(CPU, torch.float64, 16)
    assert not be.supports(CPU, torch.float32, 4) and not be.supports(CPU, torch.float32, 1)
    assert not be.supports(torch.device("meta"), torch.float32, 16)
    with pytest.raises(kernels.BackendError, match="does not support"):
        kernels.select_backend("cpp", CPU, torch.float64, 16, (32, 32), 2, 8)


def _python(code: str, env: dict[str, str]) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True,
                          timeout=300, env={**os.environ, **env})


def test_a_failed_build_falls_back_with_one_line_naming_the_compiler_error(tmp_path: Path) -> None:
    bad = tmp_path / "cpp_bsr.cpp"
    bad.write_text("#include <torch/extension.h>\nint broken( {\n")
    code = ("import torch; from pathlib import Path; from sparse_ops.kernels import cpp_build; "
            f"cpp_build.SOURCE = Path({str(bad)!r}); "
            "from sparse_ops.linear import SparseLinear; from sparse_ops import kernels; "
            "m = SparseLinear(32, 32, block_size=16, sparsity=0.5); m(torch.randn(3, 32)).sum().backward(); "
            "assert not kernels.get_backend('cpp').supports(torch.device('cpu'), torch.float32, 16); "
            "print('ok')")
    out = _python(code, {"DYNSP_KERNEL_CACHE": str(tmp_path / "cache")})
    assert out.returncode == 0 and out.stdout.strip() == "ok", out.stderr
    lines = [ln for ln in out.stderr.splitlines() if "cpp backend unavailable" in ln]
    assert len(lines) == 1, out.stderr
    assert "cpp_bsr.cpp" in lines[0] and "error:" in lines[0] and "Traceback" not in out.stderr


def test_switched_off_kernels_leave_auto_on_the_other_backends(tmp_path: Path) -> None:
    code = ("import torch; from sparse_ops import kernels; "
            "b = kernels.select_backend('auto', torch.device('cpu'), torch.float32, 16, (64, 64), 4, 32); "
            "assert b.name != 'cpp', b.name; "
            "assert not kernels.get_backend('cpp').supports(torch.device('cpu'), torch.float32, 16); print('ok')")
    out = _python(code, {"DYNSP_NO_CPP_KERNELS": "1", "DYNSP_KERNEL_CACHE": str(tmp_path)})
    assert out.returncode == 0 and out.stdout.strip() == "ok", out.stderr


def test_build_folder_is_keyed_by_source_torch_and_instruction_set(monkeypatch, tmp_path: Path) -> None:
    monkeypatch.setenv(cpp_build.CACHE_ENV, str(tmp_path))
    first = cpp_build.build_dir()
    assert first.parent == tmp_path
    monkeypatch.setattr(cpp_build, "cpu_flags", lambda: frozenset({"avx2", "fma"}))
    avx2 = cpp_build.build_dir()
    monkeypatch.setattr(cpp_build, "cpu_flags", lambda: frozenset({"avx2", "fma", "avx512f"}))
    assert cpp_build.build_dir() != avx2
    monkeypatch.setattr(cpp_build.torch, "__version__", "0.0.0")
    assert cpp_build.build_dir() not in (first, avx2)
    assert cpp_build.isa_key(frozenset({"fma", "avx2", "sse"})) == "avx2-fma"


# ---- auto by measurement ------------------------------------------------------------

@pytest.fixture
def fresh_auto(monkeypatch, tmp_path: Path):
    monkeypatch.setenv(cpp_build.CACHE_ENV, str(tmp_path))
    monkeypatch.delenv(autotune.MODE_ENV, raising=False)
    autotune.reset()
    yield tmp_path
    autotune.reset()


def test_auto_measures_once_keeps_the_fastest_and_stores_it(fresh_auto: Path, monkeypatch) -> None:
    calls = []
    real = autotune.measure

    def spy(op, candidates, *args):
        calls.append((op, tuple(candidates)))
        return real(op, candidates, *args)

    monkeypatch.setattr(autotune, "measure", spy)
    shape, nnz = (64, 96), 10
    first = kernels.select_backend("auto", CPU, torch.float32, 16, shape, nnz, 50, "forward")
    again = kernels.select_backend("auto", CPU, torch.float32, 16, shape, nnz, 60, "forward")  # same bucket
    assert first is again and len(calls) == 1
    assert {"dense", "gather_bmm", "bsr"} <= set(calls[0][1])
    assert first.supports(CPU, torch.float32, 16)
    stored = json.loads(next(fresh_auto.glob("auto-*.json")).read_text())
    (key, record), = stored.items()
    assert key == autotune.problem_key("forward", torch.float32, 16, shape, nnz, 50)
    assert record["backend"] == first.name and record["ms"][first.name] == min(record["ms"].values())
    # a new process (here: a reset) takes the stored choice without measuring again
    autotune.reset()
    assert kernels.select_backend("auto", CPU, torch.float32, 16, shape, nnz, 64, "forward") is first
    assert len(calls) == 1
    kernels.select_backend("auto", CPU, torch.float32, 16, shape, nnz, 65, "forward")  # next bucket
    assert len(calls) == 2


def test_auto_picks_what_is_fastest(fresh_auto: Path, monkeypatch) -> None:
    monkeypatch.setattr(autotune, "measure", lambda op, cands, *a: {n: (0.5 if n == "bsr" else 1.0) for n in cands})
    assert kernels.select_backend("auto", CPU, torch.float32, 4, (32, 32), 8, 16, "grad_input").name == "bsr"
    monkeypatch.setattr(autotune, "measure", lambda op, cands, *a: {n: (0.5 if n == "dense" else 1.0) for n in cands})
    assert kernels.select_backend("auto", CPU, torch.float32, 4, (32, 32), 8, 16, "grad_values").name == "dense"


def test_auto_rule_mode_and_other_devices_do_not_measure(fresh_auto: Path, monkeypatch) -> None:
    monkeypatch.setattr(autotune, "measure", lambda *a: pytest.fail("measured"))
    monkeypatch.setenv(autotune.MODE_ENV, "rule")
    assert kernels.select_backend("auto", CPU, torch.float32, 16, (768, 768), 230, 4096).name == \
        kernels.auto_backend_name(CPU, torch.float32, 16, (768, 768), 230, 4096)
    assert autotune.choose("forward", torch.device("meta"), torch.float32, 16, (32, 32), 2, 8) is None


def test_unreadable_choice_file_is_measured_again(fresh_auto: Path) -> None:
    autotune.choose("forward", CPU, torch.float32, 8, (16, 16), 2, 4)
    path = next(fresh_auto.glob("auto-*.json"))
    path.write_bytes(b"\xff\x00 not json")
    autotune.reset()
    assert autotune.choose("forward", CPU, torch.float32, 8, (16, 16), 2, 4) in autotune.CANDIDATES
    assert json.loads(path.read_text())  # rewritten


def test_a_stale_build_lock_is_removed_a_fresh_one_kept(tmp_path: Path) -> None:
    """torch waits forever on a lock left by a killed build; ours is cleared when old."""
    lock = tmp_path / "lock"
    lock.write_text("")
    assert not cpp_build.clear_stale_lock(tmp_path) and lock.exists()   # a build in progress
    old = lock.stat().st_mtime - cpp_build.STALE_LOCK_S - 60
    os.utime(lock, (old, old))
    assert cpp_build.clear_stale_lock(tmp_path) and not lock.exists()
    assert not cpp_build.clear_stale_lock(tmp_path)                      # nothing there


def test_threads_split_the_work_without_changing_a_bit(ext) -> None:
    """Each thread owns whole output rows (row GEMM) or whole blocks (SDDMM): the result
    does not depend on the thread count; the kernels share torch's OpenMP runtime."""
    w = BlockSparseMatrix.random((96, 64), 16, 0.4, torch.Generator().manual_seed(3))
    w.values.normal_(generator=torch.Generator().manual_seed(4))
    w.cache = {}
    x, dy = torch.randn(301, 64), torch.randn(301, 96)
    before = torch.get_num_threads()
    out = {}
    try:
        for threads in (1, 2):
            torch.set_num_threads(threads)
            out[threads] = (sparse_forward(x, w, "cpp"), sparse_grad_input(dy, w, "cpp"),
                            sparse_grad_values(dy, x, w, "cpp"))
    finally:
        torch.set_num_threads(before)
    for a, b in zip(out[1], out[2]):
        assert torch.equal(a, b)
    maps = Path("/proc/self/maps")
    if maps.exists():
        runtimes = {line.split()[-1] for line in maps.read_text().splitlines() if "libgomp" in line}
        assert len(runtimes) <= 1, runtimes


# ---------------------------------------------------------------------------------------
# bf16 on AMX (B = 16)

@pytest.fixture(scope="module")
def amx(ext):
    ext.force_isa(-1)  # the fp32 tests leave a forced instruction set behind, which turns AMX off
    if not ext.amx():
        pytest.skip("this CPU has no AMX-BF16 (or the OS does not grant the tile state): "
                    "bf16 stays on the other backends")
    return ext


def _check_bf16(w32: BlockSparseMatrix, n: int, seed: int = 1) -> None:
    """The bf16 products against the fp32 reference on the same bf16-rounded operands:
    forward and grad-input rounded once to bf16 at the end (relative 2^-8), grad-values
    accumulated in fp32."""
    g = torch.Generator().manual_seed(seed)
    v = w32.values.bfloat16()
    wb = BlockSparseMatrix(v, w32.rows, w32.cols, w32.shape, 16, {})
    wf = BlockSparseMatrix(v.float(), w32.rows, w32.cols, w32.shape, 16, {})
    x = torch.randn(n, w32.shape[1], generator=g).bfloat16()
    dy = torch.randn(n, w32.shape[0], generator=g).bfloat16()
    bias = torch.randn(w32.shape[0], generator=g).bfloat16()
    y = sparse_forward(x, wb, "cpp", bias)
    dx = sparse_grad_input(dy, wb, "cpp")
    dv = sparse_grad_values(dy, x, wb, "cpp")
    assert y.dtype == dx.dtype == torch.bfloat16 and dv.dtype == torch.float32
    ref_y = dense_forward_reference(x.float(), wf) + bias.float()
    torch.testing.assert_close(y.float(), ref_y, rtol=2 ** -8, atol=2 ** -8 * (1 + ref_y.abs().max().item()))
    ref_dx = dense_grad_input_reference(dy.float(), wf)
    torch.testing.assert_close(dx.float(), ref_dx, rtol=2 ** -8, atol=2 ** -8 * (1 + ref_dx.abs().max().item()))
    torch.testing.assert_close(dv, dense_grad_values_reference(dy.float(), x.float(), wf), rtol=1e-5, atol=1e-4)
    db = kernels.get_backend("cpp").grad_bias(dy)
    assert db.dtype == torch.float32
    torch.testing.assert_close(db, dy.double().sum(0).float(), rtol=1e-5, atol=1e-4)


def test_bf16_products_match_reference_on_odd_shapes_and_token_counts(amx) -> None:
    # wide and tall (grad-values transposes the narrower operand either way)
    for seed, (O, I) in enumerate(((16, 16), (48, 80), (112, 32), (64, 192), (192, 64))):
        w = BlockSparseMatrix.random((O, I), 16, 0.3, torch.Generator().manual_seed(seed))
        w.values.normal_(generator=torch.Generator().manual_seed(seed))
        for n in (1, 5, 16, 31, 32, 33, 63, 64, 65, 100, 129):   # around the 32-token pair / 64-token tiles
            _check_bf16(w, n, seed + n)


def test_bf16_empty_rows_and_columns_density_one_no_blocks_and_zero_tokens(amx) -> None:
    _check_bf16(_matrix(64, 48, 16, [(0, 1), (0, 2), (2, 2), (3, 1)]), 37)   # row 1, column 0 empty
    _check_bf16(_matrix(48, 64, 16, [(r, c) for r in range(3) for c in range(4)]), 70)  # density 1
    w = BlockSparseMatrix(torch.zeros(0, 16, 16, dtype=torch.bfloat16), torch.zeros(0, dtype=torch.int32),
                          torch.zeros(0, dtype=torch.int32), (32, 48), 16, {})
    x = torch.randn(7, 48).bfloat16()
    assert torch.equal(sparse_forward(x, w, "cpp"), torch.zeros(7, 32, dtype=torch.bfloat16))
    assert torch.equal(sparse_grad_input(torch.randn(7, 32).bfloat16(), w, "cpp"),
                       torch.zeros(7, 48, dtype=torch.bfloat16))
    assert sparse_grad_values(torch.randn(7, 32).bfloat16(), x, w, "cpp").shape == (0, 16, 16)
    w1 = _matrix(32, 32, 16, [(1, 0)])
    wb = BlockSparseMatrix(w1.values.bfloat16(), w1.rows, w1.cols, w1.shape, 16, {})
    assert sparse_forward(torch.randn(0, 32).bfloat16(), wb, "cpp").shape == (0, 32)
    dv = sparse_grad_values(torch.randn(0, 32).bfloat16(), torch.randn(0, 32).bfloat16(), wb, "cpp")
    assert dv.abs().sum() == 0


def test_bf16_autograd_under_autocast_matches_the_reference_and_survives_a_pattern_update(amx) -> None:
    torch.manual_seed(0)
    layer = SparseLinear(64, 48, sparsity=0.5, block_size=16, backend="cpp", seed=0)
    ref = SparseLinear(64, 48, sparsity=0.5, block_size=16, backend="reference", seed=0)
    x = torch.randn(3, 23, 64)
    for update in range(2):
        xs, xr = x.clone().requires_grad_(True), x.clone().requires_grad_(True)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            ys, yr = layer(xs), ref(xr)
        assert ys.dtype == torch.bfloat16
        torch.testing.assert_close(ys, yr, rtol=2 ** -7, atol=2 ** -7 * (1 + yr.abs().max().item()))
        ys.float().pow(2).sum().backward()
        yr.float().pow(2).sum().backward()
        for a, b in ((xs.grad, xr.grad), (layer.values.grad, ref.values.grad), (layer.bias.grad, ref.bias.grad)):
            assert a.dtype == b.dtype == torch.float32
            torch.testing.assert_close(a, b, rtol=2 ** -6, atol=2 ** -6 * (1 + b.abs().max().item()))
        g = torch.Generator().manual_seed(10 + update)
        new = BlockSparseMatrix.random((48, 64), 16, 0.5, g)
        for m in (layer, ref):
            m.set_pattern(new.rows, new.cols, new.values.clone())
            m.values.grad = None
            m.bias.grad = None


def test_bf16_threads_split_the_work_without_changing_a_bit(amx) -> None:
    w = BlockSparseMatrix.random((96, 160), 16, 0.4, torch.Generator().manual_seed(3))
    wb = BlockSparseMatrix(w.values.bfloat16(), w.rows, w.cols, w.shape, 16, {})
    x = torch.randn(300, 160).bfloat16()
    dy = torch.randn(300, 96).bfloat16()
    before = torch.get_num_threads()
    outs = []
    try:
        for t in (1, 2):
            torch.set_num_threads(t)
            outs.append((sparse_forward(x, wb, "cpp"), sparse_grad_input(dy, wb, "cpp"),
                         sparse_grad_values(dy, x, wb, "cpp"), kernels.get_backend("cpp").grad_bias(dy)))
    finally:
        torch.set_num_threads(before)
    for a, b in zip(*outs):
        assert torch.equal(a, b)


def test_forcing_a_lower_instruction_set_switches_bf16_off(amx) -> None:
    try:
        amx.force_isa(2)
        assert not kernels.get_backend("cpp").supports(CPU, torch.bfloat16, 16)
    finally:
        amx.force_isa(-1)
    assert kernels.get_backend("cpp").supports(CPU, torch.bfloat16, 16)
