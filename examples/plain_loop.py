"""DynSp in your own PyTorch loop, on a Hugging Face BERT (offline: a small model from a
config, random tokens). Run: python examples/plain_loop.py [OUT_DIR]

The five lines that matter are marked `# DynSp`."""
from __future__ import annotations

import sys
import tempfile

import torch
from transformers import BertConfig, BertForMaskedLM

from sparse_ops import DynSpController, densify, sparsify


def main(out_dir: str) -> None:
    torch.manual_seed(0)
    config = BertConfig(vocab_size=512, hidden_size=128, num_hidden_layers=2, num_attention_heads=2,
                        intermediate_size=512, max_position_embeddings=64)
    model = BertForMaskedLM(config)
    names = sparsify(model, sparsity=0.9, block_size=16)                       # DynSp
    print(f"sparsified {len(names)} linears, e.g. {names[0]}")
    steps = 60
    optimizer = torch.optim.AdamW(model.parameters(), lr=2e-3)
    controller = DynSpController(model, optimizer, steps, n_updates=5, seed=0)  # DynSp
    tokens = torch.randint(5, 512, (64, 32))
    for t in range(steps):
        batch = tokens[torch.randint(0, 64, (8,))]
        loss = model(input_ids=batch, labels=batch).loss
        loss.backward()
        optimizer.step()
        update = controller.step(t)                                            # DynSp
        optimizer.zero_grad()
        if update:
            print(f"step {t}: pattern update {update['update_index']}, loss {loss.item():.3f}")
    densify(model)                                                             # DynSp
    model.save_pretrained(out_dir)
    again = BertForMaskedLM.from_pretrained(out_dir)
    weight = again.bert.encoder.layer[0].intermediate.dense.weight
    blocks = weight.reshape(32, 16, 8, 16).abs().sum((1, 3)) > 0
    print(f"saved to {out_dir}; reloaded: {blocks.float().mean().item():.2f} of the FFN's 16x16 blocks "
          f"are active, final loss {loss.item():.3f}")


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else tempfile.mkdtemp(prefix="dynsp-example-"))
