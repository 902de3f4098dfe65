"""The FLOPs CLI (tools/flops.py): JSON output, breakdown, argument errors."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.tools import load_tool, tool_path

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = tool_path("flops")
flops_cli = load_tool("flops")


def _json(argv, capsys) -> dict:
    assert flops_cli.main(argv + ["--json"]) == 0
    out = capsys.readouterr().out.strip().splitlines()
    assert len(out) == 1
    return json.loads(out[0])


def test_dense_base_matches_formula(capsys):
    report = _json(["--model", "base", "--sparsity", "0", "--block-size", "1"], capsys)
    weights = 12 * (4 * 768**2 + 2 * 768 * 3072)
    assert report["flops_per_sequence"] == 3 * (2 * 128 * weights + 4 * 128**2 * 768 * 12)
    assert report["sparse_linears"] + report["attention"] == report["flops_per_sequence"]


def test_sparse_and_rigl_breakdown(capsys):
    base = _json(["--model", "mini", "--sparsity", "0.9", "--block-size", "16"], capsys)
    dense = _json(["--model", "mini", "--sparsity", "0.0", "--block-size", "16"], capsys)
    assert base["sparse_linears"] < 0.11 * dense["sparse_linears"] and base["attention"] == dense["attention"]
    rigl = _json(["--model", "mini", "--sparsity", "0.9", "--block-size", "16", "--n-updates", "10",
                  "--regrow", "gradient", "--training-steps", "1000"], capsys)
    dense_weights = dense["sparse_linears"] / 3  # 2 * S * sum(O * I)
    assert rigl["rigl_extra_per_update_sequence"] == dense_weights
    assert rigl["flops_per_sequence"] == pytest.approx(base["flops_per_sequence"] + 10 * dense_weights / 1000)
    no_steps = _json(["--model", "mini", "--sparsity", "0.9", "--block-size", "16", "--n-updates", "10",
                      "--regrow", "gradient"], capsys)
    assert no_steps["rigl_extra_per_sequence"] is None


def test_text_output_has_breakdown(capsys):
    assert flops_cli.main(["--model", "tiny", "--sparsity", "0.5", "--block-size", "4", "--n-updates", "4",
                           "--regrow", "gradient", "--training-steps", "100", "--batch-size", "8"]) == 0
    out = capsys.readouterr().out
    for part in ("sparse linears", "attention", "RigL extra", "training FLOPs / sequence", "run total"):
        assert part in out


@pytest.mark.parametrize("argv, arg", [
    (["--model", "huge"], "--model"),
    (["--model", "tiny", "--sparsity", "1.0"], "--sparsity"),
    (["--model", "tiny", "--sparsity", "abc"], "--sparsity"),
    (["--model", "tiny", "--block-size", "3"], "--block-size"),
    (["--model", "tiny", "--seq-len", "0"], "--seq-len"),
    (["--model", "tiny", "--n-updates", "-1"], "--n-updates"),
    (["--model", "tiny", "--regrow", "rigl"], "--regrow"),
    (["--model", "tiny", "--batch-size", "4"], "--batch-size"),
])
def test_bad_arguments_are_argparse_errors_naming_the_argument(argv, arg, capsys):
    with pytest.raises(SystemExit) as exc:
        flops_cli.main(argv)
    assert exc.value.code == 2
    assert f"argument {arg}" in capsys.readouterr().err


def test_cli_runs_as_a_script():
    proc = subprocess.run([sys.executable, str(SCRIPT), "--model", "tiny", "--sparsity", "0.9",
                           "--block-size", "16", "--json"], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["flops_per_sequence"] > 0


@pytest.mark.parametrize("extra", [
    {"sparsity.regrow": "gradient", "sparsity.n_updates": 3},   # RigL: dense-gradient extra
    {"sparsity.method": "static", "sparsity.distribution": "erdos_renyi"},
    {"sparsity.method": "dense", "sparsity.sparsity": 0.0},
], ids=["rigl", "static_er", "dense"])
def test_config_mode_equals_the_run_summary(tmp_path, capsys, extra):
    """One FLOPs model: a finished run's summary and `flops.py --config` agree exactly."""
    from tests.bert_ipu.tiny_run import run_tiny, tiny_overrides, write_corpus

    corpus = write_corpus(tmp_path / "corpus", documents=12, sentences=8)
    extra = {"training.training_steps": 8, "logging.eval_steps": 0, **extra}
    summary = run_tiny(corpus, tmp_path / "run", tmp_path / "cache", **extra)
    overrides = tiny_overrides(corpus, tmp_path / "run", tmp_path / "cache", **extra)
    capsys.readouterr()  # the run printed its summary
    report = _json(["--config", "configs/demo.yaml", *overrides], capsys)
    assert report["flops_per_sequence"] == pytest.approx(summary["flops_per_sequence"], rel=1e-12)
    assert report["flops_total"] == pytest.approx(summary["total_flops"], rel=1e-12)
    assert report["sequences"] == summary["sequences"]
    if "gradient" in extra.values():
        assert report["rigl_extra_per_sequence"] > 0
