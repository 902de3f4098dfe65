"""DynSp with the Hugging Face Trainer (offline: a small model from a config, random
tokens). Run: python examples/hf_trainer.py [OUT_DIR]"""
from __future__ import annotations

import sys
import tempfile

import torch
from transformers import BertConfig, BertForMaskedLM, Trainer, TrainingArguments

from sparse_ops import densify, sparsify
from sparse_ops.hf import DynSpCallback


class RandomTokens(torch.utils.data.Dataset):
    def __init__(self, n: int, length: int, vocab: int) -> None:
        self.tokens = torch.randint(5, vocab, (n, length), generator=torch.Generator().manual_seed(0))

    def __len__(self) -> int:
        return len(self.tokens)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        return {"input_ids": self.tokens[i], "labels": self.tokens[i]}


def main(out_dir: str) -> None:
    torch.manual_seed(0)
    config = BertConfig(vocab_size=512, hidden_size=128, num_hidden_layers=2, num_attention_heads=2,
                        intermediate_size=512, max_position_embeddings=64)
    model = BertForMaskedLM(config)
    sparsify(model, sparsity=0.9, block_size=16)                     # before the Trainer
    callback = DynSpCallback(n_updates=4)
    args = TrainingArguments(output_dir=out_dir, max_steps=40, per_device_train_batch_size=8,
                             learning_rate=2e-3, report_to=[], save_strategy="no", logging_steps=10,
                             use_cpu=True, disable_tqdm=True)
    trainer = Trainer(model=model, args=args, train_dataset=RandomTokens(64, 32, 512), callbacks=[callback])
    trainer.train()
    pooled = {k: v for k, v in callback.controller.last_metrics.items() if "/" not in k}
    print(f"pattern updates: {callback.controller.updates_done}, last: {pooled}")
    densify(model)
    model.save_pretrained(out_dir)
    BertForMaskedLM.from_pretrained(out_dir)
    print(f"saved and reloaded {out_dir}")


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else tempfile.mkdtemp(prefix="dynsp-example-"))
