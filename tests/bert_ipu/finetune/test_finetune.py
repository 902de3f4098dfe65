"""Fine-tuning: metrics against hand-computed values, a tiny synthetic task learned well
above chance (dense and keeping the sparsity), task files read as GLUE writes them, bad
inputs refused with one line and exit code 2."""
from __future__ import annotations

import json
import random
from pathlib import Path

import pytest
import torch

from bert_ipu.finetune import FinetuneSettings, TaskError, finetune, load_task
from bert_ipu.finetune.cli import main as finetune_main
from bert_ipu.finetune.metrics import classification_metrics
from bert_ipu.hub import load_pretrained
from bert_ipu.hub.export import export_folder

from tests.bert_ipu.hub.test_export import make_checkpoint
from tests.bert_ipu.tiny_run import WORDS, one_thread  # noqa: F401

ANIMALS, PLACES = ["cat", "dog", "bird"], ["house", "river", "garden"]


def test_metrics_match_hand_computed_values():
    m = classification_metrics(torch.tensor([1, 1, 0, 0, 1]), torch.tensor([1, 0, 0, 0, 1]), 2)
    assert m["accuracy"] == pytest.approx(0.8) and m["f1"] == pytest.approx(0.8)
    assert m["mcc"] == pytest.approx(4 / 6)
    multi = classification_metrics(torch.tensor([0, 1, 2, 2]), torch.tensor([0, 1, 2, 1]), 3)
    assert multi["f1"] == pytest.approx((1 + 2 / 3 + 2 / 3) / 3)
    assert classification_metrics(torch.tensor([1, 1]), torch.tensor([0, 1]), 2)["mcc"] == 0.0


def write_task(folder: Path, n_train: int = 160, n_eval: int = 60, seed: int = 0) -> Path:
    """GLUE-style TSVs: label 1 iff the sentence names an animal (else a place)."""
    rng = random.Random(seed)
    filler = [w for w in WORDS if w not in ANIMALS + PLACES][:20]
    folder.mkdir(parents=True, exist_ok=True)
    for name, n in (("train", n_train), ("dev", n_eval)):
        lines = ["sentence\tlabel"]
        for _ in range(n):
            label = rng.randint(0, 1)
            words = rng.sample(filler, 4) + [rng.choice(ANIMALS if label else PLACES)]
            rng.shuffle(words)
            lines.append(f"{' '.join(words)}\t{label}")
        (folder / f"{name}.tsv").write_text("\n".join(lines) + "\n")
    return folder


@pytest.fixture(scope="module")
def exported(tmp_path_factory) -> Path:
    tmp = tmp_path_factory.mktemp("ft")
    export_folder(load_pretrained(make_checkpoint(tmp, "dynamic", 8)), tmp / "hf", with_sparse=True)
    return tmp / "hf"


@pytest.mark.parametrize("keep", [False, True])
def test_synthetic_task_beats_chance(exported, tmp_path, keep, one_thread):
    task = load_task(str(write_task(tmp_path / "task")))
    assert task.label_names == ["0", "1"] and len(task.train.labels) == 160
    s = FinetuneSettings(epochs=8, learning_rate=3e-3, batch_size=16, max_length=16,
                         keep_sparsity=keep, seed=1)
    lines: list[str] = []
    results = finetune(exported, task, s, log=lines.append, save_dir=tmp_path / "model")
    assert results["final"]["accuracy"] >= 0.85, results["evaluations"]
    assert [e["step"] for e in results["evaluations"]] == [10 * (i + 1) for i in range(8)]  # per epoch
    assert len(lines) == 8 and f"finetune [pre-trained {exported.name}]: step 80/80" in lines[-1]
    # the saved model loads with plain transformers and gives the final evaluation's numbers
    from transformers import AutoModelForSequenceClassification
    saved = AutoModelForSequenceClassification.from_pretrained(str(tmp_path / "model"))
    assert (tmp_path / "model" / "tokenizer_config.json").is_file()
    assert results["sparse_layers"] == (12 if keep else 0)
    if keep:  # the exported pattern was kept: inactive blocks are still exactly zero
        from bert_ipu.finetune.trainer import _block_patterns
        state = dict(saved.named_parameters())
        for name, (rows, cols, block) in _block_patterns(exported, saved).items():
            w = state[name + ".weight"].detach()
            active = torch.zeros(w.shape[0] // block, w.shape[1] // block, dtype=torch.bool)
            active[rows, cols] = True
            mask = active.repeat_interleave(block, 0).repeat_interleave(block, 1)
            assert not w[~mask].any() and w[mask].any(), name


def test_cli_writes_results_json(exported, tmp_path, one_thread):
    task = write_task(tmp_path / "task", 32, 16)
    out = tmp_path / "results.json"
    assert finetune_main(["--model", str(exported), "--task", str(task), "--epochs", "1",
                          "--max-length", "16", "--output", str(out)]) == 0
    results = json.loads(out.read_text())
    assert set(results["final"]) >= {"accuracy", "f1", "mcc", "loss"}


def test_pairs_json_and_string_labels(tmp_path):
    rows = [{"premise": f"a {w}", "hypothesis": "b", "gold": lab}
            for w, lab in zip(WORDS[:6], ["yes", "no", "maybe"] * 2)]
    (tmp_path / "train.jsonl").write_text("\n".join(json.dumps(r) for r in rows))
    (tmp_path / "dev.json").write_text(json.dumps(rows[:3]))
    task = load_task(str(tmp_path), label_column="gold")
    assert task.label_names == ["maybe", "no", "yes"] and task.train.texts_b == ["b"] * 6
    assert task.eval.labels == [2, 1, 0]


@pytest.mark.parametrize("content,words", [
    ("sentence\ttarget\nhello\t1\nbye\t0\n", "no label column"),
    ("sentence\tlabel\nhello\t0.5\nbye\tno\n", "labels mix numbers and strings"),
    ("sentence\tlabel\nhello\t\nbye\t1\n", "empty label"),
])
def test_bad_task_files_exit_2_with_one_line(exported, tmp_path, capsys, content, words):
    (tmp_path / "train.tsv").write_text(content)
    (tmp_path / "dev.tsv").write_text("sentence\tlabel\nhi\t1\nho\t0\n")
    code = finetune_main(["--model", str(exported), "--task", str(tmp_path)])
    err = capsys.readouterr().err.strip()
    assert code == 2 and words in err and len(err.splitlines()) == 1 and "train.tsv" in err


def test_bad_model_folder_and_json_labels(tmp_path, capsys):
    task = write_task(tmp_path / "task", 8, 4)
    assert finetune_main(["--model", str(tmp_path), "--task", str(task)]) == 2
    assert "no config.json" in capsys.readouterr().err
    (tmp_path / "j").mkdir()
    (tmp_path / "j" / "train.json").write_text(json.dumps([{"text": "a", "label": [1]}]))
    (tmp_path / "j" / "dev.json").write_text(json.dumps([{"text": "a", "label": 1}]))
    with pytest.raises(TaskError, match="expected a number or string label, got \\[1\\]"):
        load_task(str(tmp_path / "j"))


def test_demo_task_is_balanced_and_loads(tmp_path):
    from bert_ipu.finetune.demo import PACKAGES, write_demo_task

    counts = write_demo_task(tmp_path / "task", seed=0)
    task = load_task(str(tmp_path / "task"))
    assert sorted(task.label_names) == sorted(PACKAGES)
    n = next(iter(counts.values()))
    assert set(counts.values()) == {n} and n >= 50
    assert len(task.train.labels) + len(task.eval.labels) == n * len(PACKAGES)
    assert not set(task.train.texts_a) & set(task.eval.texts_a)  # no paragraph in both


def test_demo_procedure_treats_both_arms_alike_and_never_looks_at_dev(tmp_path, monkeypatch,
                                                                      capsys):
    """Issue 22: the demo's settings come from a fixed procedure, the same for both arms:
    every rate of the grid scored on a validation part of the training split, the best one
    run on the whole training split for each seed, scored on dev."""
    from bert_ipu.finetune import demo

    task = load_task(str(write_task(tmp_path / "task", 50, 20)))
    calls = []

    def fake_finetune(model, t, s, log=print, save_dir=None):
        calls.append((s.random_init, s.learning_rate, s.seed, len(t.train.labels), t.eval.texts_a))
        score = {1e-4: 0.2, 3e-4: 0.5, 1e-3: 0.4, 3e-3: 0.1}[s.learning_rate] + s.random_init * 0.01
        return {"final": {"accuracy": score, "mcc": 0.0}, "time_s": 1.0}

    monkeypatch.setattr("bert_ipu.finetune.finetune", fake_finetune)
    inner = demo.validation_task(task)
    assert len(inner.train.labels) == 40 and len(inner.eval.labels) == 10
    assert set(inner.train.texts_a) | set(inner.eval.texts_a) == set(task.train.texts_a)
    for random_init in (False, True):
        rate, scores = demo.choose_rate(tmp_path, task, random_init, {"epochs": 1.0}, print)
        assert rate == 3e-4 and list(scores) == [str(r) for r in demo.RATES]
    dev = set(task.eval.texts_a)
    assert all(not dev & set(texts) for *_, texts in calls)   # dev never scored the grid
    assert [c[:4] for c in calls] == [(arm, r, 0, 40) for arm in (False, True) for r in demo.RATES]


def test_hf_task_through_datasets_offline(tmp_path, monkeypatch, capsys):
    """`hf:NAME[:CONFIG]` goes through `datasets.load_dataset` for real: a local dataset
    folder (files named by split) loads; a Hub name that is not cached, or a bad spec, gives
    one line naming --task (no network: HF_DATASETS_OFFLINE)."""
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_CACHE", str(tmp_path / "cache"))
    folder = tmp_path / "mytask"
    folder.mkdir()
    (folder / "train.csv").write_text("sentence,label\n" + "".join(
        f"a {w},{'pos' if i % 2 else 'neg'}\n" for i, w in enumerate(WORDS[:8])))
    (folder / "validation.csv").write_text("sentence,label\nb x,pos\nb y,neg\n")
    task = load_task(f"hf:{folder}")
    assert task.label_names == ["neg", "pos"] and len(task.train.labels) == 8
    assert task.eval.texts_a == ["b x", "b y"] and task.eval.labels == [1, 0]
    with pytest.raises(TaskError, match="^--task hf:no-such-org/no-such-set:cfg: cannot load"):
        load_task("hf:no-such-org/no-such-set:cfg")
    for bad in ("hf:", "hf:glue:"):
        with pytest.raises(TaskError, match="expected hf:NAME or hf:NAME:CONFIG"):
            load_task(bad)


def test_regression_metrics_match_hand_computed_values():
    from bert_ipu.finetune.metrics import regression_metrics

    m = regression_metrics(torch.tensor([1.0, 2.0, 3.0, 5.0]), torch.tensor([1.0, 3.0, 2.0, 4.0]))
    assert m["pearson"] == pytest.approx(0.8315218406202999)       # numpy.corrcoef
    assert m["spearman"] == pytest.approx(0.8)                      # 1 - 6 * 2 / (4 * 15)
    assert m["mse"] == pytest.approx(0.75) and m["examples"] == 4
    ties = regression_metrics(torch.tensor([1.0, 1.0, 2.0]), torch.tensor([1.0, 2.0, 3.0]))
    assert ties["spearman"] == pytest.approx(0.8660254037844387)    # corrcoef of average ranks


def test_regression_task_on_the_trainer(exported, tmp_path, one_thread):
    """Issue 22: STS-B-style scores (numbers with fractions) fine-tune as regression."""
    rng = random.Random(0)
    for name, n in (("train", 96), ("dev", 32)):
        lines = ["sentence1\tsentence2\tscore"]
        for _ in range(n):
            k = rng.randint(0, 4)
            words = [rng.choice(ANIMALS) for _ in range(k)] + [rng.choice(PLACES) for _ in range(4 - k)]
            lines.append(f"{' '.join(words)}\tsome {rng.choice(PLACES)}\t{k * 1.25:.3f}")
        (tmp_path / f"{name}.tsv").write_text("\n".join(lines) + "\n")
    task = load_task(str(tmp_path), label_column="score")
    assert task.kind == "regression" and task.label_names == [] and task.train.labels[0] % 1.25 == 0
    s = FinetuneSettings(epochs=6, learning_rate=3e-3, batch_size=16, max_length=16, seed=1,
                         progress=False)
    results = finetune(exported, task, s, log=lambda m: None)
    final = results["final"]
    assert results["kind"] == "regression" and {"pearson", "spearman", "mse", "loss"} <= set(final)
    assert final["pearson"] > 0.8, results["evaluations"]   # the animal count is learnable


def test_save_never_replaces_a_foreign_folder_and_settings_name_their_flag(exported, tmp_path,
                                                                          capsys):
    task = write_task(tmp_path / "task", 8, 4)
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("keep")
    assert finetune_main(["--model", str(exported), "--task", str(task), "--save",
                          str(tmp_path / "mine")]) == 2
    assert "--save" in capsys.readouterr().err and (tmp_path / "mine" / "notes.txt").read_text() == "keep"
    for argv, words in ((["--epochs", "0"], "--epochs: expected a finite number > 0"),
                        (["--warmup", "2"], "--warmup: expected a fraction in [0, 1]"),
                        (["--threads", "0"], "--threads: expected an integer > 0 or null")):
        assert finetune_main(["--model", str(exported), "--task", str(task), *argv]) == 2
        err = capsys.readouterr().err.strip()
        assert err.startswith("error: " + words) and len(err.splitlines()) == 1, err
