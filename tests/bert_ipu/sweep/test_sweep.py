"""Issue 9: sweep files -> runs, the plan / commands / bad input of the sweep CLI, the
runner's view of a run folder, the collector's statistics and the figures (fast; the
end-to-end runs are in test_sweep_e2e.py)."""
from __future__ import annotations

import json
import shlex
import statistics
from pathlib import Path

import pytest

from bert_ipu.config import ConfigError, load_config, save_config
from bert_ipu.sweep.__main__ import main
from bert_ipu.sweep.results import write_results
from bert_ipu.sweep.collect import aggregate, collect_runs
from bert_ipu.sweep.runner import RESUME, command, run_state
from bert_ipu.sweep.spec import expand_sweep

ROOT = Path(__file__).resolve().parents[3]
BASE = (ROOT / "configs" / "tiny_dense.yaml").as_posix()


def write_sweep(tmp_path: Path, body: str, name: str = "sw.yaml") -> Path:
    path = tmp_path / name
    path.write_text(f"config: {BASE}\noutput_root: {tmp_path / 'out'}\n" + body)
    return path


def test_points_cross_runs_grid_zip_and_seeds(tmp_path):
    path = write_sweep(tmp_path, "overrides: [training.training_steps=7]\n"
                       "runs:\n  - [sparsity.method=static, sparsity.sparsity=0.9]\n"
                       "  - [sparsity.method=dynamic, sparsity.sparsity=0.9]\n"
                       "grid:\n  sparsity.block_size: [1, 4]\n"
                       "zip:\n  model.size: [tiny, mini]\n  training.learning_rate: [1.0e-3, 2.0e-3]\n"
                       "seeds: [3, 4]\n")
    runs = expand_sweep(path)
    assert len(runs) == 2 * 2 * 2 * 2
    cfgs = [r.config for r in runs]
    assert len({c.output_dir for c in cfgs}) == len({c.name for c in cfgs}) == 16
    assert {(c.model.size, c.training.learning_rate) for c in cfgs} == {("tiny", 1e-3), ("mini", 2e-3)}
    assert [r.seed for r in runs[:4]] == [3, 4, 3, 4] and cfgs[1].training.seed == 4
    assert all(c.training.training_steps == 7 for c in cfgs)
    assert runs[1].output_dir == tmp_path / "out" / "001_s4" and cfgs[1].name == "sw_001_s4"
    assert runs[0].point[:2] == ("sparsity.method=static", "sparsity.sparsity=0.9")
    assert runs[0].config == load_config(BASE, list(runs[0].overrides))


@pytest.mark.parametrize("body, match", [
    ("grid:\n  sparsity.sparsity: []\n", r"grid.*non-empty list"),
    ("gird:\n  sparsity.sparsity: [0.5]\n", r"gird.*unknown config key; valid keys at the top level: config, .*did you mean .grid."),
    ("zip:\n  model.size: [tiny, mini]\n  training.seed: [1]\n", r"zip: expected lists of equal length"),
    ("runs: []\n", r"runs.*non-empty"),
    ("seeds: [1, 1]\n", r"seeds.*distinct"),
    ("grid:\n  training.learning_rate: [1.0e-3, -1]\n", r"run 001 \(training.learning_rate=-1\).*training.learning_rate"),
    ("runs:\n  - [model.size=tiny]\n  - [model.sise=tiny]\n", r"run 001 \(model.sise=tiny\).*model.sise"),
])
def test_bad_sweep_files_name_the_point_and_key(tmp_path, body, match):
    with pytest.raises(ConfigError, match=match):
        expand_sweep(write_sweep(tmp_path, body))


def test_cli_rejects_a_bad_point_before_anything_runs(tmp_path, capsys):
    path = write_sweep(tmp_path, "grid:\n  sparsity.block_size: [4, 3]\n")
    assert main([str(path)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error:") and "run 001" in err[0]
    assert "sparsity.block_size" in err[0]
    assert not (tmp_path / "out").exists()
    assert main([str(path), "--jobs", "0"]) == 2


def test_plan_and_emitted_commands(tmp_path, capsys):
    path = write_sweep(tmp_path, "overrides: [sparsity.method=static]\n"
                       "grid:\n  sparsity.sparsity: [0.5, 0.75]\nseeds: [0]\n")
    assert main([str(path), "--dry-run"]) == 0
    plan = capsys.readouterr().err
    assert "2 runs" in plan and "start" in plan and "sparsity.sparsity=0.75 seed=0" in plan
    assert not (tmp_path / "out").exists()
    assert main([str(path), "--emit-commands", "--launcher", "torchrun --nproc_per_node 8"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    argv = shlex.split(lines[1])
    assert argv[:5] == ["torchrun", "--nproc_per_node", "8", "-m", "bert_ipu.pretrain"]
    assert load_config(argv[6], argv[7:]) == expand_sweep(path)[1].config


def test_run_state_skips_finished_and_resumes_interrupted(tmp_path):
    run = expand_sweep(write_sweep(tmp_path, "overrides: [training.training_steps=10]\n"))[0]
    assert run_state(run) == "start" and RESUME not in command(run)
    (run.output_dir / "checkpoints" / "step_00000004").mkdir(parents=True)
    assert run_state(run) == "resume" and command(run, resume=True)[-1] == RESUME
    (run.output_dir / "summary.json").write_text(json.dumps({"steps": 4}))
    assert run_state(run) == "start"  # lengthened: a new run (the trainer archives the old)
    (run.output_dir / "summary.json").write_text(json.dumps({"steps": 10}))
    assert run_state(run) == "done"
    save_config(run.config, run.output_dir / "config.yaml")  # as the trainer writes it
    assert run_state(run) == "done"
    resumed = load_config(run.config_path, list(run.overrides) + [RESUME])
    save_config(resumed, run.output_dir / "config.yaml")  # a resumed attempt's record
    assert run_state(run) == "done"
    # the sweep file's rate was changed after the run: its folder is run again
    changed = expand_sweep(write_sweep(tmp_path, "overrides: [training.training_steps=10, "
                                                 "training.learning_rate=0.5]\n"))[0]
    assert changed.output_dir == run.output_dir and run_state(changed) == "redo"
    assert RESUME not in command(changed)


def fake_run(folder: Path, overrides: list[str], loss: float, dof: float | None,
             finished: bool = True) -> None:
    """A run folder as the trainer leaves it (config.yaml, summary.json, metrics.jsonl)."""
    cfg = load_config(BASE, overrides + [f"output_dir={folder}"])
    save_config(cfg, folder / "config.yaml")
    records = [{"step": s, "loss": loss + 1.0 / s} for s in (1, 2, 3)]
    records += [{"step": 3, "eval_mlm_loss": loss}]
    (folder / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    (folder / "dynsp_updates.jsonl").write_text(json.dumps(
        {"step": 3, "update_index": 0, "dof_mean": dof, "removed_new_fraction": 0.25}) + "\n")
    if finished:
        final = {"mlm_loss": loss, "mlm_accuracy": 0.5, "nsp_loss": 0.7, "nsp_accuracy": 0.5}
        summary = {"steps": 3, "sequences": 30, "total_flops": 1e9, "sequences_per_second": 10.0,
                   "final_eval": final, "dof_mean": dof}
        (folder / "summary.json").write_text(json.dumps(summary))


@pytest.fixture
def fake_sweep(tmp_path) -> Path:
    root = tmp_path / "runs"
    losses = {(4, 0): 5.0, (4, 1): 5.5, (8, 0): 4.0, (8, 1): 4.25, (8, 2): 4.75}
    for (n, seed), loss in losses.items():
        fake_run(root / f"n{n}_s{seed}", ["sparsity.method=dynamic", "sparsity.sparsity=0.5",
                                           f"sparsity.n_updates={n}", f"training.seed={seed}"],
                 loss, dof=0.1 * n)
    fake_run(root / "n16_s0", ["sparsity.method=dynamic", "sparsity.sparsity=0.5",
                               "sparsity.n_updates=16"], 3.0, dof=1.0, finished=False)
    return root


def test_collector_means_and_std_over_seeds(fake_sweep):
    rows, keys = collect_runs(fake_sweep)
    assert keys == ["sparsity.n_updates"] and len(rows) == 6
    assert [r["status"] for r in rows].count("finished") == 5
    points = {p["sparsity.n_updates"]: p for p in aggregate(rows, keys)}
    assert set(points) == {4, 8} and points[8]["n"] == 3 and points[8]["seeds"] == "0 1 2"
    losses = [4.0, 4.25, 4.75]
    assert points[8]["mlm_loss"] == pytest.approx(statistics.fmean(losses))
    assert points[8]["mlm_loss_std"] == pytest.approx(statistics.stdev(losses))
    assert points[4]["dof"] == pytest.approx(0.4) and points[4]["removed_new_fraction"] == 0.25
    assert points[4]["wall_s"] == pytest.approx(3.0)  # sequences / sequences_per_second


def test_collect_writes_tables_and_figures(fake_sweep):
    paths = {p.name: p for p in write_results(fake_sweep)}
    assert {"runs.csv", "points.csv", "results.md", "curves.png", "n_updates.png"} <= set(paths)
    # every point has the same cost: a pareto panel would have a single x value (issue 18)
    assert "pareto.png" not in paths
    md = paths["results.md"].read_text()
    assert "| sparsity.n_updates | seeds |" in md and "4.333 ± 0.382" in md
    assert "| 8 | 0, 1, 2 |" in md and "None" not in md and "(3)" not in md   # issue 22: no `None`, `1 (1)`
    assert "n16_s0 (unfinished)" in md
    for name in ("curves.png", "n_updates.png"):
        assert paths[name].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        assert paths[name].stat().st_size > 10_000


def test_pareto_figure_when_the_cost_varies(tmp_path):
    root = tmp_path / "runs"
    for i, (method, s) in enumerate((("dense", 0.0), ("static", 0.5), ("dynamic", 0.5), ("dynamic", 0.75))):
        fake_run(root / f"r{i}", [f"sparsity.method={method}", f"sparsity.sparsity={s}"], 5.0 - i / 10, dof=None)
    paths = {p.name: p for p in write_results(root)}
    assert paths["pareto.png"].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_a_rate_sweep_over_methods_and_widths_gets_the_learning_rate_figure(tmp_path):
    """Dense runs have no block size and the FFN follows H: neither counts as varying;
    several rates for one method and width give learning_rate.png instead of pareto.png."""
    root = tmp_path / "runs"
    for i, (extra, lr, loss) in enumerate([(["model.hidden_size=32"], 1e-3, 5.0),
                                           (["model.hidden_size=32"], 2e-3, 4.5),
                                           ([], 1e-3, 4.0),
                                           (["sparsity.method=dynamic", "sparsity.sparsity=0.5"], 4e-3, 4.2)]):
        fake_run(root / f"r{i}", extra + [f"training.learning_rate={lr}"], loss, dof=None)
    rows, keys = collect_runs(root)
    assert keys == ["model.hidden_size", "sparsity.method", "sparsity.sparsity",
                    "training.learning_rate"]
    names = {p.name for p in write_results(root)}
    assert "learning_rate.png" in names and "pareto.png" not in names


def test_a_setting_present_in_some_runs_of_a_method_only_varies():
    from bert_ipu.sweep.collect import varying_keys

    dense = {"sparsity": {"method": "dense", "sparsity": 0.0}}
    dyn = {"sparsity": {"method": "dynamic", "sparsity": 0.9, "block_size": 16}}
    frozen = {"sparsity": {**dyn["sparsity"], "freeze_until_step": 400}}
    assert varying_keys([dense, dyn]) == ["sparsity.method", "sparsity.sparsity"]
    assert "sparsity.freeze_until_step" in varying_keys([dense, dyn, frozen])


def test_collect_cli_errors(tmp_path, capsys):
    assert main(["collect", str(tmp_path / "missing")]) == 2
    assert main(["collect", str(tmp_path)]) == 2
    assert "no run folders" in capsys.readouterr().err


def test_table_cells_for_missing_settings_and_single_seeds():
    """Issue 22: results tables printed `None` for a setting a point lacks and `1 (1)` for
    one run of seed 1."""
    from bert_ipu.sweep.tables import markdown_table

    points = [{"sparsity.block_size": None, "n": 1, "seeds": "1", "mlm_loss": 5.0},
              {"sparsity.block_size": 16, "n": 2, "seeds": "None None", "mlm_loss": 4.0}]
    md = markdown_table(points, ["sparsity.block_size"])
    assert "| - | 1 |" in md and "| 16 | config, config |" in md and "None" not in md
