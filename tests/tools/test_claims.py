"""Issue 18: the claim table's statistics, verdicts and gate, generated from run folders."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from dynsp_tools import claims, reproduce


def test_t_quantiles_match_the_tables() -> None:
    for df, q in ((1, 12.706), (2, 4.303), (4, 2.776), (10, 2.228), (100, 1.984)):
        assert claims.t_quantile(0.975, df) == pytest.approx(q, abs=1e-3)
    assert claims.t_cdf(0.0, 3) == 0.5 and claims.t_cdf(1.0, 3) == pytest.approx(0.8045, abs=1e-4)


def test_welch_interval_and_verdicts() -> None:
    d = claims.Diff([1.0, 1.1, 0.9], [2.0, 2.2, 1.8])
    low, high, df = d.interval()
    # variances 0.01 and 0.04, 3 runs each: df = (0.05/3)^2 / ((0.01/3)^2/2 + (0.04/3)^2/2)
    assert d.value == pytest.approx(-1.0) and df == pytest.approx(0.005 / 0.0017, abs=1e-3)
    assert low < -1.0 < high < 0
    assert claims.verdict(low, high, -1) == "supported"
    assert claims.verdict(low, high, +1) == "contradicted"
    assert claims.verdict(-0.1, 0.2, -1).startswith("not resolved")
    assert claims.verdict(None, None, -1).startswith("not resolved")
    assert claims.Diff([1.0], [2.0, 2.1]).interval() == (None, None, None)


def _run(root: Path, name: str, method: str, sparsity: float, seed: int, curve: dict[int, float],
         hidden: int = 128) -> None:
    d = root / name
    d.mkdir(parents=True)
    (d / "config.yaml").write_text(
        f"sparsity:\n  method: {method}\n  sparsity: {sparsity}\nmodel:\n  hidden_size: {hidden}\n"
        f"  vocab_size: 100\ndata:\n  mask_tokens: 2\ntraining:\n  seed: {seed}\n", encoding="utf-8")
    last = max(curve)
    flops = 1e9 * (1 - sparsity)
    (d / "summary.json").write_text(json.dumps({"steps": last, "sequences": 10, "total_flops": flops,
                                                "final_eval": {"mlm_loss": curve[last]}}))
    (d / "metrics.jsonl").write_text("".join(json.dumps({"step": s, "eval_mlm_loss": v}) + "\n"
                                             for s, v in sorted(curve.items())))


def test_gate_needs_a_clear_and_growing_gap(tmp_path: Path) -> None:
    _run(tmp_path / "go", "d", "dense", 0.0, 0, {100: 6.0, 200: 5.5, 300: 5.2, 400: 5.0})
    _run(tmp_path / "go", "s", "static", 0.9, 0, {100: 6.0, 200: 5.6, 300: 5.35, 400: 5.2})
    ok, why = claims.gate(tmp_path / "go")
    assert ok and why.startswith("go:") and "+0.200 nat at step 400" in why
    _run(tmp_path / "shrinking", "d", "dense", 0.0, 0, {100: 6.0, 200: 5.5, 300: 5.2, 400: 5.0})
    _run(tmp_path / "shrinking", "s", "static", 0.9, 0, {100: 6.0, 200: 5.8, 300: 5.45, 400: 5.12})
    ok, why = claims.gate(tmp_path / "shrinking")
    assert not ok and why.startswith("no-go:") and "+0.120" in why and "+0.250 at step 300" in why
    _run(tmp_path / "small", "d", "dense", 0.0, 0, {100: 6.0, 400: 5.0})
    _run(tmp_path / "small", "s", "static", 0.9, 0, {100: 6.0, 400: 5.05})
    assert not claims.gate(tmp_path / "small")[0]
    assert not claims.gate(tmp_path / "absent")[0]


def test_claim_table_is_generated_from_the_runs(tmp_path: Path) -> None:
    dose = tmp_path / "dose"
    for seed, (dyn, sta) in enumerate(((5.50, 5.60), (5.52, 5.61), (5.51, 5.63)), start=1):
        _run(dose, f"dyn{seed}", "dynamic", 0.99, seed, {50: 6.5, 100: 6.0 + seed / 100, 200: dyn})
        _run(dose, f"sta{seed}", "static", 0.99, seed, {50: 6.5, 100: 6.0 + seed / 50, 200: sta})
        _run(dose, f"den{seed}", "dense", 0.0, seed, {50: 6.5, 100: 6.0, 200: 5.40 + seed / 100})
    paths = claims.write(tmp_path, tmp_path / "out")
    text = (tmp_path / "out" / "claims.md").read_text()
    assert "| DynSp beats static at s = 0.99" in text and "supported" in text
    assert "-0.103 [" in text  # mean(5.50, 5.52, 5.51) - mean(5.60, 5.61, 5.63)
    assert "| 200 | supported |" in text  # the curves separate at the last evaluation only
    assert "static s = 0.99 is capacity-limited" in text
    # every arm: FLOPs as a multiple of dense BERT-Tiny's; the MLM head's FLOPs
    # (3 x 2 x 2 masked x (128^2 + 128 x 100) x 10 sequences = 3.5e6) relative to them
    assert "| dense | 0 | 128 | 3 | 1e+09 | 1.000 | 0.00 |" in text
    assert "| static | 0.99 | 128 | 3 | 1e+07 | 0.010 | 0.35 |" in text
    rows = (tmp_path / "out" / "claims.csv").read_text().splitlines()
    assert len(rows) == 3 and rows[0].startswith("claim,")
    assert any(p.name == "differences.png" for p in paths)


def test_reproduce_skips_a_gated_sweep_and_says_why(tmp_path: Path, monkeypatch) -> None:
    ran = []
    monkeypatch.setattr(reproduce, "run_sweep", lambda runs, jobs, log: ran.append(runs[0].output_dir.parent.name) or {})
    monkeypatch.setattr(reproduce, "write_results", lambda *a: None)
    monkeypatch.setattr(reproduce, "link_corpora", lambda suite: "")
    monkeypatch.setattr(claims, "gate", lambda root: (False, "no-go: test reason"))
    monkeypatch.setattr(claims, "write", lambda runs, out: [])
    assert reproduce.main(["--only", "prose_gate", "prose", "--results", str(tmp_path)]) == 0
    assert ran == ["prose_gate"]
    assert "no-go: test reason" in (tmp_path / "cpu" / "prose" / "GATE.md").read_text()
    monkeypatch.setattr(claims, "gate", lambda root: (True, "go: fine"))
    assert reproduce.main(["--only", "prose_gate", "prose", "--results", str(tmp_path)]) == 0
    assert ran == ["prose_gate", "prose_gate", "prose"]


def test_reproduce_refuses_an_unknown_sweep_and_a_missing_corpus(tmp_path: Path, monkeypatch, capsys) -> None:
    assert reproduce.main(["--only", "pareto"]) == 2  # the cpu suite has no pareto sweep now
    assert "suite cpu has no sweep pareto" in capsys.readouterr().err
    monkeypatch.setattr(reproduce, "ROOT", tmp_path / "repo")
    assert "data/sotu" in reproduce.link_corpora("cpu")
    offline = tmp_path / "shared" / "data" / "sotu"
    offline.mkdir(parents=True)
    assert reproduce.link_corpora("cpu") == ""
    assert (tmp_path / "repo" / "data" / "sotu").resolve() == offline.resolve()
    assert reproduce.link_corpora("cpu_b16") == ""


def test_generated_blocks_replace_only_their_markers(tmp_path: Path) -> None:
    from dynsp_tools.pages import replace_block

    page = tmp_path / "p.md"
    page.write_text("intro\n<!-- claims:begin -->\nold\n<!-- claims:end -->\noutro\n")
    assert replace_block(page, "claims", "new table\n")
    assert page.read_text() == "intro\n<!-- claims:begin -->\nnew table\n<!-- claims:end -->\noutro\n"
    assert not replace_block(page, "kernels", "x") and "x" not in page.read_text()
    assert not replace_block(tmp_path / "missing.md", "claims", "x")


def test_kernel_report_is_built_from_the_benchmark_json(tmp_path: Path) -> None:
    from dynsp_tools import kernel_report

    case = {"name": "4HxH", "out_features": 3072, "in_features": 768, "n_tokens": 4096, "sparsity": 0.9,
            "block_size": 16, "amp": "fp32", "threads": 1}
    step = {"machine": {"cpu": "Test CPU", "cpus": 2, "torch": "x", "avx512f": True},
            "step_rows": [{"case": case, "peak_gflops": 100.0,
                           "ms": {"nn.Linear": {"min_ms": 100.0, "median_ms": 110.0},
                                  "cpp": {"min_ms": 20.0, "median_ms": 22.0}},
                           "derived": {"nn.Linear": {"gflops": 50.0, "peak_fraction": 0.5},
                                       "cpp": {"gflops": 30.0, "peak_fraction": 0.3, "speedup_min": 5.0,
                                               "speedup_median": 5.0, "epsilon": 2.0}}}]}
    (tmp_path / "step.json").write_text(json.dumps(step))
    page = tmp_path / "README.md"
    page.write_text("<!-- kernels:begin -->\n<!-- kernels:end -->\n")
    assert kernel_report.main(["--step", str(tmp_path / "step.json"), "--out", str(tmp_path / "out"),
                               "--pages", str(page)]) == 0
    text = (tmp_path / "out" / "kernels.md").read_text()
    assert "Test CPU" in text and "| 4HxH | 3072x768 | 16 | fp32 | 1 | cpp | 20.0 / 22.0 | 5.00 / 5.00 | 30 | 30 | 2.00 |" in text
    assert "cpp 5.00x (eps 2.00)" in page.read_text()
    assert (tmp_path / "out" / "kernels" / "step.json").is_file()
    assert kernel_report.main(["--step", str(tmp_path / "absent.json")]) == 2


def test_kernel_report_generates_its_comparisons_from_the_json(tmp_path: Path) -> None:
    from dynsp_tools import kernel_report

    rows = []
    for auto_ms, cpp_ms in ((21.0, 20.0), (30.0, 30.0), (40.0, 44.0)):
        rows.append({"case": {"name": "4HxH"}, "auto_choices": {"a": "cpp", "b": "cpp"},
                     "ms": {"auto": {"median_ms": auto_ms}, "cpp": {"median_ms": cpp_ms}}})
    rows.append({"case": {}, "auto_choices": {"a": "dense"},
                 "ms": {"auto": {"median_ms": 9.0}, "cpp": {"median_ms": 1.0}}})   # not the same kernels
    text = kernel_report.auto_vs_cpp({"step_rows": rows})
    assert "(3 rows)" in text and "1.00x" in text and "from 0.91 to 1.05" in text
    train = {"profiles": {"base dense": [{"op": "aten::mm", "share": 0.5}],
                          "base dynsp_b16": [{"op": "cpp_bsr::forward", "share": 0.2},
                                             {"op": "aten::_fused_adamw_", "share": 0.031}]}}
    text = kernel_report.next_bottlenecks(train)
    assert "base dynsp_b16" in text and "base dense" not in text
    assert "AdamW update of every parameter (the word embedding's included) 3.1%" in text
    assert "word embedding's gradient below 3.1% (not among the top operators)" in text
    ba = {"rows": [{"run": "r", "precision": "fp32", "before": 10.0, "after": 20.0,
                    "before_runs": [9.0, 11.0], "after_runs": [19.0, 21.0]}]}
    assert "| r | fp32 | 10.0 | 20.0 | 2.00 | 9.0, 11.0; 19.0, 21.0 |" in kernel_report.before_after_table(ba)


def test_contrasts_of_several_groups_and_the_dense_line_condition() -> None:
    c = claims.Contrast([(1.0, [1.0, 1.2]), (-1.0, [0.5, 0.7]), (-1.0, [0.9, 1.1]), (1.0, [0.3, 0.5])])
    low, high, df = c.interval()
    assert c.value == pytest.approx(1.1 - 0.6 - 1.0 + 0.4)
    # four groups of 2 with variance 0.02 each: se = sqrt(4 x 0.01), df = 4 x 1 = 4
    assert df == pytest.approx(4.0) and high - c.value == pytest.approx(claims.t_quantile(0.975, 4) * 0.2)
    assert claims.verdict(-0.1, 0.1, 0).startswith("condition holds")
    assert claims.verdict(-0.3, -0.1, 0) == "condition fails: below the dense line"
    dense = [{"hidden_size": h, "total_flops": f, "mlm_loss": 5.0} for h, f in ((32, 1e10), (64, 1e11), (128, 1e12))]
    line = claims.dense_line(dense, 10 ** 10.5)
    assert [(round(w, 3), name) for w, _, name in line] == [(-0.5, "dense H=32"), (-0.5, "dense H=64")]
    assert claims.dense_line(dense, 1e13) is None


def test_reproduce_never_removes_a_dangling_corpus_link(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setattr(reproduce, "ROOT", tmp_path / "repo")
    (tmp_path / "shared" / "data" / "sotu").mkdir(parents=True)
    link = tmp_path / "repo" / "data" / "sotu"
    link.parent.mkdir(parents=True)
    link.symlink_to(tmp_path / "elsewhere")            # someone's link, pointing nowhere
    error = reproduce.link_corpora("cpu")
    assert "does not exist" in error and str(tmp_path / "elsewhere") in error
    assert link.is_symlink() and Path(link.readlink()) == tmp_path / "elsewhere"
