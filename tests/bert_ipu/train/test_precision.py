"""Precision resolution, autocast and loss scaling."""
from __future__ import annotations

import pytest
import torch

from bert_ipu.train import precision as P


def test_auto_is_bf16_on_cuda_and_follows_native_bf16_on_cpu(monkeypatch):
    from bert_ipu.devices import torch_devices as TD

    assert TD.CudaDevice(torch.device("cuda")).resolve_precision("auto") == "bf16"
    cpu = TD.CpuDevice(torch.device("cpu"))
    monkeypatch.setattr(TD, "cpu_has_bf16_matmul", lambda: True)
    assert cpu.resolve_precision("auto") == "bf16"
    monkeypatch.setattr(TD, "cpu_has_bf16_matmul", lambda: False)
    assert cpu.resolve_precision("auto") == "fp32"
    assert cpu.resolve_precision("fp16") == "fp16"


def test_native_bf16_is_read_from_the_cpu_flags(tmp_path, monkeypatch):
    from bert_ipu.devices import cpu_has_bf16_matmul

    monkeypatch.setattr(torch.backends.cpu, "get_cpu_capability", lambda: "AVX512")
    info = tmp_path / "cpuinfo"
    info.write_text("model name\t: Xeon\nflags\t: fpu sse avx512f amx_bf16 amx_tile\n")
    assert cpu_has_bf16_matmul(info)                     # Intel with AMX
    info.write_text("flags\t: fpu sse avx2 avx512f avx512_bf16\n")
    assert cpu_has_bf16_matmul(info)                     # AMD Zen 4: AVX512-BF16, no AMX
    info.write_text("flags\t: fpu sse avx2 fma\n")
    assert not cpu_has_bf16_matmul(info)                 # AMD Zen 3: AVX2 only
    info.write_text("model name\t: avx512_bf16 in a name\nflags\t: fpu avx2\n")
    assert not cpu_has_bf16_matmul(info)                 # only the flags line counts
    assert not cpu_has_bf16_matmul(tmp_path / "missing")


def test_unknown_precision_is_named():
    from bert_ipu.devices import resolve_device

    with pytest.raises(ValueError, match="precision must be one of.*got 'fp8'"):
        resolve_device("cpu").resolve_precision("fp8")


@pytest.mark.parametrize("precision,dtype", [
    ("fp32", torch.float32), ("bf16", torch.bfloat16), ("fp16", torch.float16)])
def test_autocast_runs_matmuls_in_the_chosen_dtype(precision, dtype):
    x = torch.randn(4, 4)
    with P.autocast(precision, "cpu"):
        assert (x @ x).dtype == dtype


def test_dynamic_scaler_backs_off_skips_and_grows_back():
    scaler = P.LossScaler("dynamic", init_scale=2.0**16, growth_interval=3)
    assert scaler.update(True) is False and scaler.scale == 2.0**15
    assert scaler.update(True) is False and scaler.scale == 2.0**14
    assert [scaler.update(False) for _ in range(3)] == [True, True, True]
    assert scaler.scale == 2.0**15 and scaler.skipped_steps == 2


def test_static_scaler_skips_overflow_but_keeps_its_scale():
    scaler = P.build_loss_scaler("fp16", loss_scaling=512, auto_loss_scaling=False)
    assert scaler.mode == "static"
    assert scaler.update(True) is False and scaler.scale == 512
    assert scaler.update(False) is True and scaler.skipped_steps == 1


def test_no_scaling_outside_fp16():
    scaler = P.build_loss_scaler("bf16", loss_scaling=512, auto_loss_scaling=True)
    loss = torch.tensor(3.0)
    assert scaler.mode == "none" and scaler.scale_loss(loss) is loss


def test_scale_then_unscale_recovers_the_gradient_exactly():
    scaler = P.LossScaler("static", init_scale=512)
    w = torch.nn.Parameter(torch.tensor([1.5, -2.0]))
    scaler.scale_loss((w * torch.tensor([3.0, 0.25])).sum()).backward()
    scaler.unscale_([w])
    torch.testing.assert_close(w.grad, torch.tensor([3.0, 0.25]), rtol=0, atol=0)


def test_grads_are_finite_detects_inf_and_nan():
    a, b = torch.nn.Parameter(torch.ones(2)), torch.nn.Parameter(torch.ones(2))
    a.grad = torch.ones(2)
    assert P.grads_are_finite([a, b])
    b.grad = torch.tensor([1.0, float("nan")])
    assert not P.grads_are_finite([a, b])
    # large tensors (vectorised, multi-threaded reductions), every dtype, any position;
    # huge finite values are finite
    for dtype in (torch.float32, torch.bfloat16, torch.float16, torch.float64):
        big = torch.nn.Parameter(torch.zeros(100_003, dtype=dtype))
        big.grad = torch.full((100_003,), float(torch.finfo(dtype).max), dtype=dtype)
        assert P.grads_are_finite([big])
        for bad in (float("nan"), float("inf"), -float("inf")):
            for pos in (0, 50_000, 100_002):
                g = torch.randn(100_003).to(dtype)
                g[pos] = bad
                big.grad = g
                assert not P.grads_are_finite([a, big]), (dtype, bad, pos)


def test_scaler_state_round_trips_and_checks_mode():
    scaler = P.LossScaler("dynamic", init_scale=1024, growth_interval=5)
    scaler.update(True)
    scaler.update(False)
    other = P.LossScaler("dynamic", init_scale=2.0**16, growth_interval=5)
    other.load_state_dict(scaler.state_dict())
    assert other.state_dict() == scaler.state_dict()
    with pytest.raises(ValueError, match="mode 'dynamic'.*'static'"):
        P.LossScaler("static").load_state_dict(scaler.state_dict())


def test_bad_scaler_arguments_are_named():
    with pytest.raises(ValueError, match="init_scale.*-1"):
        P.LossScaler("dynamic", init_scale=-1)
    with pytest.raises(ValueError, match="mode must be one of"):
        P.LossScaler("auto")
