"""The model card (README.md of an exported folder) and its numbers (dynsp_run.json)."""
from __future__ import annotations

from typing import Any

from bert_ipu.hub.source import Pretrained


def run_facts(src: Pretrained, n_params: int, sizes: dict[str, int]) -> dict[str, Any]:
    """The numbers the card shows: shape, sparsity, steps, FLOPs, held-out losses, DOF."""
    m, s, summary = src.cfg.model, src.cfg.sparsity, src.summary
    final = summary.get("final_eval") or {}
    return {
        "name": src.cfg.name, "source": str(src.path), "steps": src.step,
        "layers": m.num_hidden_layers, "hidden_size": m.hidden_size,
        "heads": m.num_attention_heads, "vocab_size": m.vocab_size,
        "max_position_embeddings": m.max_position_embeddings, "parameters": n_params,
        "method": s.method, "sparsity": s.sparsity,
        "block_size": s.block_size if s.method != "dense" else None,
        "regrow": s.regrow if s.method == "dynamic" else None,
        "distribution": s.distribution if s.method != "dense" else None,
        "sequence_length": src.cfg.data.sequence_length, "corpus": src.cfg.data.source,
        "total_flops": summary.get("total_flops"),
        "flops_per_sequence": summary.get("flops_per_sequence"),
        "eval_mlm_loss": final.get("mlm_loss"), "eval_nsp_loss": final.get("nsp_loss"),
        "eval_mlm_accuracy": final.get("mlm_accuracy"),
        "dof_mean": summary.get("dof_mean"), "pattern_updates": summary.get("pattern_updates"),
        "eval_step": summary.get("eval_step", src.step if final else None),
        "file_bytes": sizes,
    }


def _fmt(value: Any) -> str:
    if value is None:
        return "not recorded"
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def _rows(facts: dict[str, Any]) -> list[tuple[str, Any]]:
    """(label, value) lines of the card's table."""
    return [("layers / hidden / heads", f"{facts['layers']} / {facts['hidden_size']} / "
             f"{facts['heads']}"), ("parameters (dense form)", facts["parameters"]),
            ("vocabulary", facts["vocab_size"]),
            ("max positions / trained sequence length",
             f"{facts['max_position_embeddings']} / {facts['sequence_length']}"),
            ("method", facts["method"]), ("sparsity", facts["sparsity"]),
            ("block size", facts["block_size"]), ("regrowth", facts["regrow"]),
            ("sparsity distribution", facts["distribution"]), ("corpus", facts["corpus"]),
            ("optimizer steps", facts["steps"]), ("training FLOPs", facts["total_flops"]),
            ("FLOPs per sequence", facts["flops_per_sequence"]),
            ("held-out evaluation at step", facts.get("eval_step")),
            ("held-out MLM loss", facts["eval_mlm_loss"]),
            ("held-out NSP loss", facts["eval_nsp_loss"]),
            ("held-out MLM accuracy", facts["eval_mlm_accuracy"]),
            ("final mean DOF", facts["dof_mean"]),
            ("pattern updates", facts["pattern_updates"])]


def model_card(facts: dict[str, Any]) -> str:
    """README.md text: what the model is, how it was trained, how to load it."""
    table = "\n".join(f"| {k} | {_fmt(v)} |" for k, v in _rows(facts))
    files = "\n".join(f"| `{k}` | {v:,} |" for k, v in facts["file_bytes"].items())
    return f"""---
library_name: transformers
tags: [bert, fill-mask, sparse, dynsp]
---
# {facts['name']}

A BERT pre-trained (MLM + NSP) with DynSp-BERT from `{facts['source']}`.

| | |
|---|---|
{table}

The dense weights (`model.safetensors`) hold zeros outside the active blocks of a sparse
model; `sparse/model.safetensors` (when present) stores only the active blocks
(`bert_ipu.hub.sparse.load_compressed` rebuilds the sparse model from it).

| file | bytes |
|---|---|
{files}

```python
from transformers import AutoTokenizer, AutoModelForMaskedLM
tokenizer = AutoTokenizer.from_pretrained("PATH")
model = AutoModelForMaskedLM.from_pretrained("PATH")
```
"""
