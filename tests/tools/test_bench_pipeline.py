"""bench_pipeline: the cases compare equal process counts and equal sequences per step."""
from __future__ import annotations

import pytest

from dynsp_tools.bench_pipeline import cases, even_split


def test_even_split_sums_to_the_layers():
    assert even_split(12, 2) == [6, 6] and even_split(5, 3) == [2, 2, 1]
    with pytest.raises(SystemExit, match="--procs: expected 1..4"):
        even_split(4, 5)


def test_cases_keep_sequences_per_step_and_process_count():
    rows = {name: (procs, extra) for name, procs, extra in cases(2, 8, 4)}
    assert rows["single"] == (1, ["training.gradient_accumulation=8"])
    assert rows["dp"] == (2, ["training.gradient_accumulation=4"])  # 2 replicas x 4 = 8
    assert rows["gpipe"][0] == rows["1f1b"][0] == 2
    assert "training.layers_per_stage=[2, 2]" in rows["1f1b"][1]
    assert "training.pipeline_schedule=1f1b" in rows["1f1b"][1]
    with pytest.raises(SystemExit, match="--accumulation: expected a multiple of --procs=2"):
        cases(2, 7, 4)
