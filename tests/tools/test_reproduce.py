"""Issue 9: the reproduction suite's driver validates every sweep before running any
and records how the suite was run."""
from __future__ import annotations

import json
from dataclasses import replace

from bert_ipu.config import load_config
from bert_ipu.sweep.spec import expand_sweep
from dynsp_tools import reproduce


def _planned(plan: str) -> int:
    return plan.count("  start  ") + plan.count("  done  ") + plan.count("  resume") + plan.count("  redo  ")


def test_dry_run_plans_every_sweep_of_every_suite(capsys):
    assert reproduce.main(["--dry-run"]) == 0  # the default suite: cpu (the paper's settings)
    plan = capsys.readouterr().err
    for name in reproduce.SUITES["cpu"]:
        assert f"{name}: " in plan
    assert _planned(plan) == sum(len(expand_sweep(reproduce.ROOT / "configs" / "sweeps" / "cpu" / f"{n}.yaml"))
                                 for n in reproduce.SUITES["cpu"])
    assert reproduce.main(["--suite", "cpu_b16", "--dry-run"]) == 0
    plan = capsys.readouterr().err
    for name in reproduce.SUITES["cpu_b16"]:
        assert f"{name}: " in plan
    assert _planned(plan) == 60  # the first CPU suite, unchanged
    assert reproduce.main(["--suite", "gpu", "--dry-run", "--only", "pareto"]) == 0
    assert "pareto: 15 runs" in capsys.readouterr().err


def test_run_md_names_commit_machine_and_unfinished_runs(tmp_path):
    runs = expand_sweep(reproduce.ROOT / "configs" / "sweeps" / "cpu_b16" / "regrow.yaml")
    # the sweep's runs moved to tmp_path; run 0 has the runner's record of a failure
    moved = [replace(r, config=load_config(r.config_path, list(r.overrides) +
                                            [f"output_dir={tmp_path / str(i)}"]))
             for i, r in enumerate(runs)]
    (tmp_path / "0").mkdir()
    (tmp_path / "0" / "sweep_run.json").write_text(json.dumps({"status": "failed", "wall_s": 90}))
    reproduce.write_run_md(tmp_path / "RUN.md", "cpu", {"regrow": moved}, 120.0)
    text = (tmp_path / "RUN.md").read_text()
    assert f"commit: `{reproduce.commit()}`" in text and "cores" in text
    assert "| regrow | 4 | 1.5 |" in text and f"{tmp_path / '0'} (failed)" in text
    assert f"{tmp_path / '1'} (not run)" in text
    assert "(all invocations, gaps included): 1.5 min" in text  # the one record: 90 s


def test_cpu_suite_runs_two_one_thread_runs_at_a_time(monkeypatch, tmp_path):
    seen = []
    monkeypatch.setattr(reproduce, "run_sweep", lambda runs, jobs, log: seen.append(jobs) or {})
    monkeypatch.setattr(reproduce, "write_results", lambda *a: None)
    args = ["--only", "lr", "--results", str(tmp_path)]
    assert reproduce.main(args) == 0 and reproduce.main(args + ["--jobs", "1"]) == 0
    assert reproduce.main(["--suite", "gpu"] + args) == 0
    assert seen == [2, 1, 1]
    lr = expand_sweep(reproduce.ROOT / "configs" / "sweeps" / "cpu" / "lr.yaml")
    assert {r.config.training.num_threads for r in lr} == {1}
