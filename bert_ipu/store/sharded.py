"""Sharded training state on torch.distributed.checkpoint (DCP): a pipelined run's
checkpoints, written by every rank in parallel, readable by any split.

Every tensor of the training state is keyed by the name it has in the single-process
model, so a checkpoint does not depend on how the layers were split:

    model/<state-dict name>            weights, biases, SparseLinear values / rows / cols
    optim/<parameter name>/<key>       AdamW state (exp_avg, exp_avg_sq, step)
    dynsp/<layer>/<key>                DynSp per-layer state (ever-active bits, last grown
                                       blocks; `<key>.json`: numbers and the layer's
                                       shape, JSON text as a uint8 tensor)

Each rank saves the entries of its stage (replicas and the tied word embedding's two
copies save the same key: DCP keeps one); `.metadata` (DCP's) says which file holds
which key. What is not per layer (optimizer group settings with the single-process
parameter order, the controller's counters and settings) is `COMMON`, written by rank
0 with the trainer's files. A reader takes the keys it needs (`read`, any split) or all
of them (`classic_files`: the single-process files model.pt, optimizer.pt,
controller.pt of store/checkpoint.py's layout).
"""
from __future__ import annotations

import json
import warnings
from pathlib import Path
from typing import Any, Iterable, Mapping

import torch

DCP_METADATA = ".metadata"
COMMON = "sharded.pt"
SHARDED_FILES = ("model.pt", "optimizer.pt", "controller.pt")
"""The single-process files whose content a sharded checkpoint holds in its shards."""


class ShardError(ValueError):
    """The shards do not hold what this run needs (message: one line, the key)."""


# ------------------------------------------------------------------ JSON in a tensor
def _pack(value: Any) -> torch.Tensor:
    return torch.frombuffer(bytearray(json.dumps(value).encode()), dtype=torch.uint8)


def _unpack(tensor: torch.Tensor) -> Any:
    return json.loads(bytes(tensor.to(torch.uint8).tolist()).decode())


# ------------------------------------------------------------------ state -> shard
def shard_of(model_state: Mapping[str, torch.Tensor], optimizer_state: Mapping[str, Any],
             names: list[str], controller_state: Mapping[str, Any] | None) -> dict[str, torch.Tensor]:
    """One rank's DCP state dict: its model entries (already filtered to the stage's,
    single-process names), its optimizer's per-parameter state (`names`: the parameter
    name of each optimizer index) and its controller's per-layer state."""
    shard = {f"model/{k}": v for k, v in model_state.items()}
    for index, state in optimizer_state["state"].items():
        for key, value in state.items():
            shard[f"optim/{names[index]}/{key}"] = value
    if controller_state is not None:
        for layer, info in controller_state["layers"].items():
            shard[f"dynsp/{layer}/layer.json"] = _pack({**info, "shape": list(info["shape"])})
            tracker = controller_state["trackers"][layer]
            for key, value in tracker.items():
                if torch.is_tensor(value):
                    shard[f"dynsp/{layer}/{key}"] = value
                else:
                    shard[f"dynsp/{layer}/{key}.json"] = _pack(value)
    return shard


def common_of(optimizer_state: Mapping[str, Any], group_names: list[list[str]],
              controller_state: Mapping[str, Any] | None) -> dict[str, Any]:
    """What rank 0 writes besides the shards: the optimizer groups' settings with their
    parameters' names in the single-process order (`group_names`), and the controller's
    state without its layers."""
    groups = [{k: v for k, v in g.items() if k != "params"} for g in optimizer_state["param_groups"]]
    if len(groups) != len(group_names):
        raise ValueError(f"common_of: {len(groups)} optimizer groups, {len(group_names)} name lists")
    controller = None if controller_state is None else {
        k: v for k, v in controller_state.items() if k not in ("layers", "trackers")}
    return {"optimizer_groups": [dict(g, names=list(n)) for g, n in zip(groups, group_names)],
            "controller": controller}


# ------------------------------------------------------------------ shard -> state
def optimizer_state(shard: Mapping[str, torch.Tensor], common: Mapping[str, Any],
                    group_names: list[list[str]]) -> dict[str, Any]:
    """An optimizer state dict for parameters `group_names` (per group, in the
    optimizer's order) from the shard entries and the saved group settings."""
    saved = common["optimizer_groups"]
    if len(saved) != len(group_names):
        raise ShardError(f"the checkpoint has {len(saved)} optimizer groups, this run "
                         f"{len(group_names)}")
    state: dict[int, dict[str, torch.Tensor]] = {}
    groups, index = [], 0
    for settings, names in zip(saved, group_names):
        ids = []
        for name in names:
            entry = {k.rsplit("/", 1)[1]: v for k, v in shard.items()
                     if k.startswith(f"optim/{name}/")}
            if entry:
                state[index] = entry
            ids.append(index)
            index += 1
        groups.append({**{k: v for k, v in settings.items() if k != "names"}, "params": ids})
    return {"state": state, "param_groups": groups}


def controller_state(shard: Mapping[str, torch.Tensor], common: Mapping[str, Any],
                     layers: Iterable[str]) -> dict[str, Any] | None:
    """The controller state dict of `layers` (None for a dense run)."""
    if common.get("controller") is None:
        return None
    out = dict(common["controller"], layers={}, trackers={})
    for layer in layers:
        prefix = f"dynsp/{layer}/"
        entries = {k[len(prefix):]: v for k, v in shard.items() if k.startswith(prefix)}
        if "layer.json" not in entries:
            raise ShardError(f"it holds no DynSp state for layer {layer!r}")
        info = _unpack(entries.pop("layer.json"))
        out["layers"][layer] = {**info, "shape": tuple(info["shape"])}
        out["trackers"][layer] = {k.removesuffix(".json"): _unpack(v) if k.endswith(".json") else v
                                  for k, v in entries.items()}
    return out


# ------------------------------------------------------------------ DCP I/O
def write(folder: Path, shard: dict[str, torch.Tensor]) -> list[str]:
    """Save this rank's shard into `folder` (collective over the default process group
    when one is initialised); returns the names of the files this rank wrote."""
    import torch.distributed as dist
    import torch.distributed.checkpoint as dcp

    rank = dist.get_rank() if dist.is_initialized() else 0
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        dcp.save(shard, storage_writer=dcp.FileSystemWriter(folder, sync_files=True),
                 planner=dcp.DefaultSavePlanner(flatten_state_dict=False))
    return sorted(p.name for p in Path(folder).glob(f"__{rank}_*.distcp"))


def metadata(folder: Path) -> dict[str, Any]:
    """Key -> DCP storage metadata (TensorStorageMetadata: .size, .properties.dtype)."""
    import torch.distributed.checkpoint as dcp

    try:
        return dict(dcp.FileSystemReader(folder).read_metadata().state_dict_metadata)
    except Exception as exc:  # unreadable metadata: one line
        raise ShardError(f"its {DCP_METADATA} is unreadable ({type(exc).__name__}: {exc})") from None


def read(folder: Path, keys: Iterable[str], expected: Mapping[str, torch.Size] | None = None,
         device: torch.device | str = "cpu") -> dict[str, torch.Tensor]:
    """The entries `keys` of the shards in `folder`, read by this process alone (no
    collective: any split reads any key). ShardError names a key that is missing or
    whose shape differs from `expected` (another model or sparsity structure)."""
    import torch.distributed.checkpoint as dcp

    saved = metadata(folder)
    target: dict[str, torch.Tensor] = {}
    for key in keys:
        if key not in saved:
            raise ShardError(f"it holds no {key} (written for another model or sparsity)")
        meta = saved[key]
        want = None if expected is None else expected.get(key)
        if want is not None and tuple(meta.size) != tuple(want):
            raise ShardError(f"its {key} is {tuple(meta.size)}, this run's is {tuple(want)} "
                             "(another model or sparsity)")
        target[key] = torch.empty(meta.size, dtype=meta.properties.dtype)
    if not target:
        return {}
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)
            dcp.load(target, storage_reader=dcp.FileSystemReader(folder),
                     planner=dcp.DefaultLoadPlanner(flatten_state_dict=False), no_dist=True)
    except Exception as exc:  # a shard file missing or damaged under a valid manifest
        raise ShardError(f"its shards cannot be read ({type(exc).__name__}: "
                         f"{str(exc).splitlines()[0] if str(exc) else ''})") from None
    return {k: v.to(device) for k, v in target.items()}


def classic_files(folder: Path, common: Mapping[str, Any],
                  device: torch.device | str = "cpu") -> dict[str, Any]:
    """Every shard entry, as the single-process checkpoint files (model.pt,
    optimizer.pt in the single-process parameter order, controller.pt)."""
    return classic_from_shard(read(folder, metadata(folder), device=device), common)


def classic_from_shard(shard: Mapping[str, torch.Tensor], common: Mapping[str, Any]
                       ) -> dict[str, Any]:
    """Every stage's shard entries (merged) as the single-process files."""
    model = {k[len("model/"):]: v for k, v in shard.items() if k.startswith("model/")}
    names = [g["names"] for g in common["optimizer_groups"]]
    layers = sorted({k.split("/")[1] for k in shard if k.startswith("dynsp/")})
    return {"model.pt": model, "optimizer.pt": optimizer_state(shard, common, names),
            "controller.pt": {"controller": controller_state(shard, common, layers),
                              "frozen": None}}
