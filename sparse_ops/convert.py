"""DynSp inside a model and a loop you already have.

    from sparse_ops import sparsify, densify, DynSpController

    names = sparsify(model, sparsity=0.9, block_size=16)        # nn.Linear -> SparseLinear
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)  # after sparsify
    controller = DynSpController(model, optimizer, total_steps, n_updates=40)
    for t, batch in enumerate(batches):
        loss = model(**batch).loss
        loss.backward()
        optimizer.step()
        controller.step(t)          # prunes / regrows on schedule, keeps the optimizer state
        optimizer.zero_grad()
    densify(model)                  # back to nn.Linear (e.g. for save_pretrained)

`sparsify` replaces the `nn.Linear` layers whose qualified names match `patterns`
(fnmatch; default: the six encoder linears of a BERT-style model, `DEFAULT_PATTERNS`) by
`SparseLinear` in compressed form: only the active blocks' values (and their optimizer
state) exist from then on. The pattern starts from the dense weights' largest blocks
(`init="magnitude"`, the weights kept) or a random one with fresh weights
(`init="random"`, as at the start of always-sparse training). With the Hugging Face
Trainer, `sparse_ops.hf.DynSpCallback` calls the controller at the right moments.
"""
from __future__ import annotations

import fnmatch
from typing import Callable, Mapping, Optional, Sequence, Union

import torch
from torch import nn

from sparse_ops.format import SparseFormatError
from sparse_ops.linear import SparseLinear

# The encoder linears of BERT / RoBERTa-style models in `transformers` (query, key, value,
# attention output, FFN up and down); other families pass their own patterns.
DEFAULT_PATTERNS = ("*encoder.layer.*.attention.self.query", "*encoder.layer.*.attention.self.key",
                    "*encoder.layer.*.attention.self.value", "*encoder.layer.*.attention.output.dense",
                    "*encoder.layer.*.intermediate.dense", "*encoder.layer.*.output.dense")


class SparsifyError(ValueError):
    """Nothing to sparsify, or a layer that cannot be (one line naming it)."""


def _parent(model: nn.Module, name: str) -> tuple[nn.Module, str]:
    path, _, leaf = name.rpartition(".")
    return (model.get_submodule(path) if path else model), leaf


def matching_linears(model: nn.Module, patterns: Sequence[str] = DEFAULT_PATTERNS) -> list[str]:
    """Qualified names of the nn.Linear layers of `model` matching any of `patterns`."""
    return [n for n, m in model.named_modules()
            if isinstance(m, nn.Linear) and any(fnmatch.fnmatchcase(n, p) for p in patterns)]


def sparsify(model: nn.Module, sparsity: float = 0.9, block_size: int = 16,
             patterns: Sequence[str] = DEFAULT_PATTERNS, init: str = "magnitude",
             backend: str = "auto", seed: int = 0, *,
             density: Optional[Mapping[str, float]] = None,
             layer_seed: Optional[Callable[[str], int]] = None,
             inactive: str = "zero", device: Union[torch.device, str, None] = None) -> list[str]:
    """Replace the matching nn.Linear layers of `model` by SparseLinear, in place; returns
    their names. SparsifyError (one line) when nothing matches, a layer's shape is not a
    multiple of `block_size`, or an argument is out of range; nothing is changed then.

    `density` gives some layers their own fraction of active blocks (the others get
    1 - sparsity; e.g. an ERK distribution); with init="random", `layer_seed(name)` seeds
    each layer's pattern and values on its own (so a layer's pattern does not depend on
    which other layers exist), else one generator from `seed` serves them in order.
    `inactive` is SparseLinear's mode for inactive blocks ("zero", or "frozen" fixed
    random weights seeded by layer_seed(name) + 1). Dense layers on the meta device (no
    memory) become SparseLinear on the CPU with init="random", or on `device` when given
    (device="meta": shape-only layers with their patterns' sizes, e.g. the layers of other
    pipeline stages)."""
    if not 0.0 <= sparsity < 1.0:
        raise SparsifyError(f"sparsify: argument 'sparsity' must be in [0, 1), got {sparsity!r}")
    if init not in ("magnitude", "random"):
        raise SparsifyError(f"sparsify: argument 'init' must be 'magnitude' or 'random', got {init!r}")
    names = matching_linears(model, patterns)
    if not names:
        linears = [n for n, m in model.named_modules() if isinstance(m, nn.Linear)][:4]
        raise SparsifyError(f"sparsify: no nn.Linear of the model matches {list(patterns)} "
                            f"(its linears include {linears}); pass patterns=")
    for name in names:  # check every layer before changing any
        weight = model.get_submodule(name).weight
        if weight.shape[0] % block_size or weight.shape[1] % block_size:
            raise SparsifyError(f"sparsify: layer {name!r} is {tuple(weight.shape)}, not a multiple of "
                                f"block_size={block_size}; choose a block size dividing it or leave "
                                "the layer out of patterns")
    if init == "magnitude" and any(model.get_submodule(n).weight.is_meta for n in names):
        raise SparsifyError("sparsify: init='magnitude' needs the dense weights; the model's "
                            "linears are on the meta device (use init='random')")
    generator = torch.Generator().manual_seed(seed)
    for i, name in enumerate(names):
        dense = model.get_submodule(name)
        layer_density = None if density is None else density.get(name)
        try:
            if init == "magnitude":
                layer = SparseLinear.from_dense(dense, block_size=block_size, sparsity=sparsity,
                                                backend=backend)
            else:
                own = None if layer_seed is None else int(layer_seed(name))
                if device is None:
                    where = None if dense.weight.is_meta else dense.weight.device
                else:
                    where = torch.device(device)
                layer = SparseLinear(dense.in_features, dense.out_features, dense.bias is not None,
                                     sparsity=sparsity, density=layer_density,
                                     block_size=block_size, backend=backend, device=where,
                                     dtype=dense.weight.dtype,
                                     generator=None if own is not None else generator,
                                     seed=own, inactive=inactive,
                                     inactive_seed=0 if own is None else own + 1)
        except (SparseFormatError, ValueError) as exc:
            raise SparsifyError(f"sparsify: layer {name!r}: {exc}") from None
        parent, leaf = _parent(model, name)
        setattr(parent, leaf, layer)
    return names


def densify(model: nn.Module, names: Optional[Sequence[str]] = None) -> list[str]:
    """Replace SparseLinear layers (all, or `names`) by nn.Linear holding their dense weight
    (inactive blocks zero), in place: the model `transformers` saves and loads as usual."""
    found = [n for n, m in model.named_modules() if isinstance(m, SparseLinear)]
    chosen = found if names is None else list(names)
    for name in chosen:
        sparse = model.get_submodule(name)
        if not isinstance(sparse, SparseLinear):
            raise SparsifyError(f"densify: layer {name!r} is not a SparseLinear")
        weight = sparse.to_dense_weight().detach()
        dense = nn.Linear(sparse.in_features, sparse.out_features, sparse.bias is not None,
                          device=weight.device, dtype=weight.dtype)
        with torch.no_grad():
            dense.weight.copy_(weight)
            if sparse.bias is not None:
                dense.bias.copy_(sparse.bias)
        parent, leaf = _parent(model, name)
        setattr(parent, leaf, dense)
    return chosen


__all__ = ["DEFAULT_PATTERNS", "SparsifyError", "densify", "matching_linears", "sparsify"]
