"""dynsp-finetune-report: the README block from the demo's results, nothing typed."""
from __future__ import annotations

import json

from dynsp_tools import finetune_report


def test_block_from_results(tmp_path):
    results = {"procedure": {"rates": [1e-4, 3e-4], "epochs": 4.0, "seeds": [0, 1, 2],
                             "validation_fraction": 0.2},
               "task": {"packages": {"a": 5, "b": 5}, "train": 8, "dev": 2, "chance": 0.5},
               "pretrained": {"rate": 3e-4, "validation_accuracy": {"0.0001": 0.5, "0.0003": 0.75},
                              "dev_accuracy": [0.6, 0.7, 0.8], "mean": 0.7, "std": 0.1},
               "random_init": {"rate": 1e-4, "validation_accuracy": {"0.0001": 0.6, "0.0003": 0.5},
                               "dev_accuracy": [0.5, 0.5, 0.5], "mean": 0.5, "std": 0.0}}
    (tmp_path / "r.json").write_text(json.dumps(results))
    page = tmp_path / "README.md"
    page.write_text("a\n<!-- finetune-demo:begin -->\nold\n<!-- finetune-demo:end -->\nb\n")
    assert finetune_report.main([str(tmp_path / "r.json"), "--pages", str(page)]) == 0
    text = page.read_text()
    assert "| pre-trained | 0.0003 | 0.0001: 0.500, 0.0003: 0.750 | 0.600, 0.700, 0.800 | 0.700 | 0.100 | 0.058 |" in text
    assert "Difference of means (pre-trained - random init): +0.200, standard error 0.058 (3.5 standard errors)." in text
    assert "old" not in text and text.endswith("b\n")
