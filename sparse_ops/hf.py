"""DynSp in the Hugging Face `Trainer`: a `TrainerCallback` that builds the controller once
the Trainer has made its optimizer, and updates the patterns right after each optimizer
step (the moments of re-allocated blocks start at zero, survivors keep theirs: the
optimizer state stays compressed).

    from sparse_ops import sparsify
    from sparse_ops.hf import DynSpCallback

    sparsify(model, sparsity=0.9, block_size=16)            # before building the Trainer
    trainer = Trainer(model=model, args=args, train_dataset=data,
                      callbacks=[DynSpCallback(n_updates=40)])
    trainer.train()

`transformers` is imported here only (sparse_ops itself does not need it).
"""
from __future__ import annotations

from typing import Any, Optional

from transformers import TrainerCallback

from sparse_ops.dynsp.controller import DynSpController
from sparse_ops.convert import SparsifyError


class DynSpCallback(TrainerCallback):
    """Pattern updates on the Trainer's schedule; `settings` are DynSpController's
    (n_updates, prune_ratio, prune_schedule, regrow, seed, ...). After training,
    `controller` holds the controller (its metrics: `controller.last_metrics`)."""

    def __init__(self, **settings: Any) -> None:
        self.settings = {"seed": 0, **settings}
        self.controller: Optional[DynSpController] = None

    def on_train_begin(self, args: Any, state: Any, control: Any, model: Any = None,
                       optimizer: Any = None, **kwargs: Any) -> None:
        if model is None or optimizer is None:
            raise SparsifyError("DynSpCallback: the Trainer passed no model or optimizer")
        self.controller = DynSpController(model, optimizer, int(state.max_steps), **self.settings)

    def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        # global_step counts finished optimizer steps: the one just taken is global_step - 1
        if self.controller is not None:
            self.controller.step(int(state.global_step) - 1)
