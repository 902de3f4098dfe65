"""The model's dropout: counter-based CPU mask (C++ extension) with torch's as the fallback."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import torch
import torch.nn.functional as F

from bert_ipu.model import dropout as D
from sparse_ops.kernels import cpp_build

ROOT = Path(__file__).resolve().parents[3]


def test_mask_has_the_right_rate_and_scale_for_every_dtype(ext) -> None:
    torch.manual_seed(0)
    for dtype in (torch.float32, torch.float64, torch.bfloat16, torch.float16):
        x = torch.ones(200_001, dtype=dtype)          # odd: the last hash serves one element
        for p in (0.1, 0.5, 0.9):
            y = D.dropout(x, p)
            kept = y != 0
            n = x.numel()
            # binomial(n, 1 - p): 5 standard deviations
            assert abs(kept.sum().item() - n * (1 - p)) < 5 * (n * p * (1 - p)) ** 0.5, (dtype, p)
            assert torch.equal(y[kept], torch.full_like(y[kept], 1.0 / (1.0 - p)))
            assert y.dtype == dtype and y.shape == x.shape


def test_reproducible_from_torch_seed_thread_invariant_and_fresh_per_call(ext) -> None:
    x = torch.randn(4, 37, 129)
    torch.manual_seed(5)
    a, b = D.dropout(x, 0.3), D.dropout(x, 0.3)
    assert not torch.equal(a, b)                      # a new mask every call
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        torch.manual_seed(5)
        a1 = D.dropout(x, 0.3)
        torch.set_num_threads(2)
        torch.manual_seed(5)
        a2 = D.dropout(x, 0.3)
    finally:
        torch.set_num_threads(before)
    assert torch.equal(a, a1) and torch.equal(a1, a2)
    # neighbouring elements are not correlated (two draws share one hash)
    m = (D.dropout(torch.ones(1_000_000), 0.5) != 0).float()
    corr = torch.corrcoef(torch.stack([m[0::2], m[1::2]]))[0, 1].item()
    assert abs(corr) < 0.01


def test_backward_uses_the_forward_mask(ext) -> None:
    torch.manual_seed(1)
    x = torch.randn(3, 50, requires_grad=True)
    y = D.dropout(x, 0.25)
    dy = torch.randn_like(y)
    y.backward(dy)
    mask = (y != 0).float()
    torch.testing.assert_close(x.grad, dy * mask / 0.75)


def test_module_eval_zero_p_inplace_and_p_one(ext) -> None:
    x = torch.randn(10, 10)
    m = D.Dropout(0.5)
    m.eval()
    assert m(x) is x
    assert D.dropout(x, 0.0) is x
    assert torch.equal(D.dropout(x, 1.0), torch.zeros_like(x))
    y = x.clone()
    D.Dropout(0.5, inplace=True).train()(y)
    assert ((y == 0) | torch.isclose(y, 2 * x)).all()
    assert isinstance(m, torch.nn.Dropout) and not list(m.parameters()) and not list(m.buffers())


def test_attention_equals_sdpa_without_dropout_and_is_unbiased_with_it(ext) -> None:
    torch.manual_seed(0)
    q, k, v = (torch.randn(2, 3, 9, 8) for _ in range(3))
    mask = torch.ones(2, 1, 1, 9, dtype=torch.bool)
    mask[1, ..., -3:] = False
    ref = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
    torch.testing.assert_close(D.attention(q, k, v, mask, 0.0), ref)
    # with dropout: masked keys still get no weight, and the mean over many masks is the
    # attention without dropout (dropout is unbiased)
    v_probe = torch.zeros_like(v)
    v_probe[1, :, -3:] = 1.0                           # only the masked keys carry a value
    assert torch.equal(D.attention(q, k, v_probe, mask, 0.3)[1], torch.zeros(3, 9, 8))
    mean = torch.stack([D.attention(q, k, v, mask, 0.3) for _ in range(3000)]).mean(0)
    torch.testing.assert_close(mean, ref, rtol=0, atol=0.06)


def test_without_the_extension_torch_dropout_runs(tmp_path: Path) -> None:
    code = ("import torch; from bert_ipu.model import dropout as D; "
            "x = torch.ones(100000); y = D.dropout(x, 0.5); "
            "torch.manual_seed(3); a = D.dropout(x, 0.5); torch.manual_seed(3); "
            "b = torch.nn.functional.dropout(x, 0.5); print(torch.equal(a, b))")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=300,
                         env={**os.environ, cpp_build.DISABLE_ENV: "1"})
    assert out.returncode == 0 and out.stdout.strip() == "True", out.stderr
