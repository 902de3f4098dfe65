"""Pipeline x data-parallel layout of a torchrun job (CPU / CUDA pipelines).

`torchrun --nproc_per_node P*R` with P = len(training.layers_per_stage) runs P pipeline
stages x R data-parallel replicas on a 2-D device mesh ("dp", "pp"): global rank
r = replica * P + stage. Stage s holds encoder layers [first_layer, first_layer + n);
stage 0 also the embeddings, the last stage the pooler and the MLM/NSP heads.

This module only does the arithmetic and the process groups; the step runner is
bert_ipu/train/pipeline_step.py and the stage module bert_ipu/model/stages.py.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable, Sequence

import torch
import torch.distributed as dist

if TYPE_CHECKING:
    from bert_ipu.config import Config

PIPELINE_SCHEDULES = ("gpipe", "1f1b")
"""training.pipeline_schedule names; `schedule_class` is the one map to torch's classes."""


def schedule_class(name: str) -> type:
    """torch.distributed.pipelining's schedule class of a PIPELINE_SCHEDULES name."""
    from torch.distributed.pipelining import Schedule1F1B, ScheduleGPipe

    classes = dict(zip(PIPELINE_SCHEDULES, (ScheduleGPipe, Schedule1F1B)))
    if name not in classes:
        raise ValueError(f"schedule_class: name must be one of {PIPELINE_SCHEDULES}, got {name!r}")
    return classes[name]


class LayoutError(ValueError):
    """The stage split does not fit the job (the message starts with `key`)."""

    def __init__(self, key: str, message: str) -> None:
        super().__init__(f"{key}: {message}")
        self.key = key


@dataclass(frozen=True)
class PipelineLayout:
    """This process's place in a P-stage x R-replica pipeline job."""

    layers_per_stage: tuple[int, ...]
    stage: int
    replica: int

    @property
    def stages(self) -> int:
        return len(self.layers_per_stage)

    @property
    def first_layer(self) -> int:
        return sum(self.layers_per_stage[: self.stage])

    @property
    def is_first(self) -> bool:
        return self.stage == 0

    @property
    def is_last(self) -> bool:
        return self.stage == self.stages - 1

    def rank_of(self, stage: int, replica: int) -> int:
        """Global rank of (stage, replica)."""
        return replica * self.stages + stage

    def layer_range(self, stage: int) -> range:
        """Encoder layers of `stage`."""
        start = sum(self.layers_per_stage[:stage])
        return range(start, start + self.layers_per_stage[stage])


def layout_for(layers_per_stage: Sequence[int] | None, key: str, rank: int,
               world_size: int) -> PipelineLayout | None:
    """The layout of rank `rank` of `world_size`, or None when no pipeline is asked for
    (no split, or a single stage). LayoutError naming `key` when the split does not fit:
    more stages than processes, or a world size not divisible by the stage count."""
    if layers_per_stage is None or len(layers_per_stage) < 2:
        return None
    stages = len(layers_per_stage)
    if min(layers_per_stage) < 1:
        raise LayoutError(key, f"expected at least one encoder layer per stage on CPU/CUDA "
                          f"pipelines, got {list(layers_per_stage)}")
    if stages > world_size:
        raise LayoutError(key, f"expected at most WORLD_SIZE={world_size} stages (one process "
                          f"per stage: torchrun --nproc_per_node {stages}), got {stages} stages")
    if world_size % stages:
        raise LayoutError(key, f"expected a stage count dividing WORLD_SIZE={world_size} "
                          f"(stages x data-parallel replicas), got {stages} stages")
    return PipelineLayout(tuple(int(n) for n in layers_per_stage), rank % stages, rank // stages)


def pipeline_layout(cfg: "Config", rank: int, world_size: int) -> PipelineLayout | None:
    """The layout of a run's config (training.layers_per_stage, or its alias
    layers_per_ipu) for rank `rank` of `world_size`; LayoutError naming the key set."""
    t = cfg.training
    key = "training.layers_per_stage" if t.layers_per_stage is not None else "training.layers_per_ipu"
    return layout_for(t.pipeline_layers, key, rank, world_size)


_LAYER = re.compile(r"^bert\.encoder\.layer\.(\d+)\.")


def owner_stage(name: str, layout: PipelineLayout) -> int:
    """The stage that trains state-dict entry `name` of BertForPreTraining (the tied
    decoder weight belongs to the last stage's heads; stage 0 holds the same values)."""
    match = _LAYER.match(name)
    if match:
        layer = int(match.group(1))
        return next(s for s in range(layout.stages) if layer in layout.layer_range(s))
    return 0 if name.startswith("bert.embeddings.") else layout.stages - 1


def stage_keeps(layout: PipelineLayout) -> Callable[[str], bool]:
    """State-dict name -> whether this rank's stage builds and trains it (the `keep` of
    bert_ipu.model.build_model; the tied word embedding is kept on the first and the
    last stage, through either of its names)."""
    return lambda name: owner_stage(name, layout) == layout.stage


@dataclass
class PipelineGroups:
    """Process groups of one rank: its pipeline (pp: the schedule's activations and
    gradients), the same ranks again for the runner's own collectives (stages: losses,
    norms, metrics, never interleaved with the schedule's pending sends), its stage's
    replicas (dp), and the first + last stage of its replica (the tied word embedding)."""

    pp: Any
    stages: Any
    dp: Any
    tie: Any
    mesh: Any = field(default=None, repr=False)


def make_groups(layout: PipelineLayout, device_type: str) -> PipelineGroups:
    """A 2-D DeviceMesh ("dp", "pp"; its dp groups average gradients) and dedicated
    per-replica pipeline groups; every rank must call this."""
    from torch.distributed.device_mesh import init_device_mesh

    replicas = dist.get_world_size() // layout.stages
    mesh = init_device_mesh(device_type, (replicas, layout.stages), mesh_dim_names=("dp", "pp"))
    mine: tuple[Any, ...] = ()
    for r in range(replicas):  # new_group is collective: every rank creates every group
        ranks = [layout.rank_of(s, r) for s in range(layout.stages)]
        # Dedicated groups: the mesh's "pp" group may be the default group, which the
        # loop's collectives share with the schedule's still-pending sends.
        groups = (dist.new_group(ranks), dist.new_group(ranks),
                  dist.new_group([ranks[0], ranks[-1]]))
        if r == layout.replica:
            mine = groups
    return PipelineGroups(pp=mine[0], stages=mine[1], dp=mesh.get_group("dp"), tie=mine[2],
                          mesh=mesh)
