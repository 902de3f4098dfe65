"""dynsp-bench-data on a tiny corpus: every num_proc timed, the page block generated."""
from __future__ import annotations

import json

from dynsp_tools import bench_data
from tests.bert_ipu.data.test_data_cache import write_corpus


def test_measures_each_num_proc_and_renders_the_page_block(tmp_path, shared_data, monkeypatch):
    import tempfile

    (tmp_path / "scratch").mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path / "scratch"))
    write_corpus(tmp_path / "corpus", n_docs=20)
    page = tmp_path / "page.md"
    page.write_text("intro\n<!-- data-prep:begin -->\nold\n<!-- data-prep:end -->\nrest\n")
    out = tmp_path / "r.json"
    assert bench_data.main(["--input-files", str(tmp_path / "corpus"), "--vocab-file",
                            str(shared_data / "vocab/bert-base-uncased-vocab.txt"),
                            "--repeats", "1", "--shard-documents", "4", "--json", str(out),
                            "--pages", str(page)]) == 0
    data = json.loads(out.read_text())
    assert [r["num_proc"] for r in data["rows"]] == [1, 2] and data["corpus"]["documents"] == 20
    assert all(r["median_s"] > 0 and len(r["seconds"]) == 1 for r in data["rows"])
    assert data["rows"][0]["speedup"] == 1.0
    text = page.read_text()
    assert "old" not in text and "| 2 |" in text and text.endswith("rest\n")
    assert not list((tmp_path / "scratch").iterdir())   # its temporary caches are gone
