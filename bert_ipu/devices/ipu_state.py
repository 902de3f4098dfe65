"""The IPU's optimizer state of the sparse values, as the DynSp controller sees it.

PopTorch keeps the optimizer state on the device. `optimizer.state_dict()` of a PopTorch
optimizer reads it back as `ipu_state`: {"<Prefix>___<tensor name>": tensor}; PopART's
Adam names its first and second moments `Accl1___...` and `Accl2___...` (gradient
accumulators `Accum___...`, step counters `Step___...`), and the tensor name is the
parameter's path in the compiled module (`model.bert.encoder.layer.0....values`).
`optimizer.load_state_dict(state)` writes the state back before the next run.

`DeviceMoments` is an optimizer look-alike (`param_groups`, `state`) over those tensors,
so that the controller carries them across a pattern update exactly as it carries torch
AdamW's on CPU/CUDA (sparse_ops/dynsp/remap.py): survivors move with their block, new
blocks start at zero, pruned blocks are dropped; scalar state (step counts) is kept.

    moments = DeviceMoments({name: m.values for name, m in sparse_modules(model).items()})
    state = ipu_optimizer.state_dict()
    moments.pull(state["ipu_state"])          # the controller now sees the device moments
    controller.step(t)                        # remaps them in place
    state["ipu_state"] = moments.push(state["ipu_state"])
    ipu_optimizer.load_state_dict(state)      # uploaded before the next run

Nothing here imports PopTorch, so it is tested on any machine.
"""
from __future__ import annotations

from typing import Mapping

from torch import Tensor, nn

SEPARATOR = "___"


def tensor_name(key: str) -> str:
    """The tensor name of an `ipu_state` key: `Accl1___model.a.values` -> `model.a.values`.

    >>> tensor_name("Accl1___model.bert.encoder.layer.0.output.dense.values")
    'model.bert.encoder.layer.0.output.dense.values'
    """
    return key.split(SEPARATOR, 1)[1] if SEPARATOR in key else key


def names_param(key: str, name: str) -> bool:
    """True when `ipu_state` key `key` belongs to the parameter at path `name` (the
    compiled module may prefix the path: `model.` + name).

    >>> names_param("Accl2___model.bert.encoder.layer.1.output.dense.values",
    ...             "bert.encoder.layer.1.output.dense.values")
    True
    >>> names_param("Accl2___model.bert.encoder.layer.11.output.dense.values",
    ...             "bert.encoder.layer.1.output.dense.values")
    False
    """
    tensor = tensor_name(key)
    return tensor == name or tensor.endswith("." + name)


class DeviceMoments:
    """Optimizer look-alike for DynSpController over the device state of `values`.

    `named_values`: parameter path (as in the host model) -> SparseLinear `values`.
    Between `pull` and `push`, `state[param]` maps every `ipu_state` key of that
    parameter shaped like it to a host tensor the controller edits in place."""

    def __init__(self, named_values: Mapping[str, nn.Parameter]) -> None:
        self.named_values = dict(named_values)
        self.param_groups = [{"params": list(self.named_values.values())}]
        self.state: dict[nn.Parameter, dict[str, Tensor]] = {}

    def pull(self, ipu_state: Mapping[str, Tensor]) -> int:
        """Expose the device tensors of every `values`; returns how many were found."""
        self.state = {}
        for name, param in self.named_values.items():
            mine = {key: value.detach().clone() for key, value in ipu_state.items()
                    if names_param(key, name) and isinstance(value, Tensor)
                    and value.shape == param.shape}
            if mine:
                self.state[param] = mine
        return sum(len(v) for v in self.state.values())

    def push(self, ipu_state: Mapping[str, Tensor]) -> dict[str, Tensor]:
        """`ipu_state` with the (remapped) tensors of `pull` written back; clears them."""
        out = dict(ipu_state)
        for mine in self.state.values():
            out.update(mine)
        self.state = {}
        return out


__all__ = ["DeviceMoments", "tensor_name", "names_param", "SEPARATOR"]
