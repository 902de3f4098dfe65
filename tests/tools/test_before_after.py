"""tools/before_after.py: both sides from worktrees at fixed commits, alternating,
medians, every worktree removed (the runs themselves replaced by a stub here)."""
from __future__ import annotations

import json
import subprocess
from pathlib import Path

from dynsp_tools import before_after

ROOT = Path(__file__).resolve().parents[2]


def _worktrees() -> list[str]:
    out = subprocess.run(["git", "worktree", "list"], cwd=ROOT, capture_output=True, text=True).stdout
    return out.strip().splitlines()


def test_runs_alternate_between_two_fixed_commits_and_clean_up(tmp_path, monkeypatch) -> None:
    order = []

    def fake_run(tree: Path, config: str, overrides, out: Path) -> float:
        side = tree.name
        order.append(side)
        assert (tree / "bert_ipu").is_dir() and tree != ROOT      # a worktree, not this tree
        return {"before": 10.0, "after": 20.0}[side] + len(order)

    monkeypatch.setattr(before_after, "_run", fake_run)
    before = _worktrees()
    out = tmp_path / "ba.json"
    assert before_after.main(["--before", "HEAD~1", "--after", "HEAD", "--repeats", "2",
                              "--only", "demo_fp32", "--json", str(out)]) == 0
    assert order == ["before", "after", "before", "after"]
    report = json.loads(out.read_text())
    row = report["rows"][0]
    assert row["before_runs"] == [11.0, 13.0] and row["after_runs"] == [22.0, 24.0]
    assert row["before"] == 12.0 and row["after"] == 23.0
    assert "--after" in report["description"] and report["machine"]
    assert _worktrees() == before
