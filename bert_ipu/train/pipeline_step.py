"""The step of a pipelined CPU/CUDA run: torch.distributed.pipelining stages x data
parallelism (training.layers_per_stage / layers_per_ipu, training.pipeline_schedule).

Every rank builds only its stage (bert_ipu/model/stages.py; the rest of the model stays
on the meta device: shapes, no memory), with the values the whole model would have
from the same seed (weights and patterns), and trains it with its own AdamW and DynSp
controller. Per step t:

1. the `gradient_accumulation` micro-batches of this replica go through the schedule
   (GPipe or 1F1B); the last stage's loss is the single-process arithmetic
   (`loss / accumulation`, loss-scaled), so the gradients are the same sums;
2. gradients are averaged over the stage's data-parallel replicas, and the tied word
   embedding's two halves (stage 0's lookup, the last stage's decoder) are summed;
3. the global gradient norm is the single-process one: per-parameter norms of every
   stage, in the single-process parameter order, then clip, AdamW, DynSp (the
   controller draws the random numbers of its layers' global indices and verifies its
   patterns over the stage's replicas); the update metrics are combined over stages.

Evaluation runs through the stages (only the loss sums travel); checkpoints are
sharded: every rank writes its stage's tensors in parallel (bert_ipu/store/sharded.py,
torch.distributed.checkpoint), and any split, or an unpipelined run, resumes them.
"""
from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any, Callable, Iterable

import torch
import torch.distributed as dist
from torch import nn
from torch.distributed.pipelining import PipelineStage
from torch.utils._pytree import tree_map

from bert_ipu.devices import distributed as D
from bert_ipu.store import sharded
from bert_ipu.devices.pipeline import make_groups, pipeline_layout, schedule_class
from bert_ipu.model.bert import ENCODER_LINEARS, pretraining_output
from bert_ipu.model.stages import BertStage, stage_module_names
from bert_ipu.train.optim import build_optimizer, parameter_groups
from bert_ipu.train.evaluate import accumulate_eval, eval_means, to_device
from bert_ipu.train.precision import autocast
from bert_ipu.train.step import StepResult, TorchStepRunner, flush_losses, optimizer_update
from bert_ipu.logs import Log
from sparse_ops.dynsp.metrics import merge_records

if TYPE_CHECKING:
    from bert_ipu.config import Config
    from bert_ipu.devices import Device
    from bert_ipu.train.loop import Run

STAGE0_INPUTS = ("input_ids", "attention_mask", "masked_lm_positions", "token_type_ids")


class PipelineStepRunner(TorchStepRunner):
    """One pipeline stage of one data-parallel replica (see the module docstring)."""

    sharded = True

    def __init__(self, device: "Device", core: nn.Module, groups: list[dict[str, Any]],
                 cfg: "Config", info: D.DistInfo, log: Log) -> None:
        t = cfg.training
        self.device, self.dist, self.cfg = device, info, cfg
        self.layout = pipeline_layout(cfg, info.rank, info.world_size)
        lay = self.layout
        self.groups = make_groups(lay, device.torch_device.type)
        self.replicas = info.world_size // lay.stages
        self.stage_module = BertStage(core, lay.first_layer, lay.layers_per_stage[lay.stage],
                                      lay.is_first, lay.is_last)
        self.optimizer = build_optimizer(parameter_groups(self.stage_module, t.weight_decay),
                                         t.learning_rate, betas=tuple(t.adam_betas), eps=t.adam_eps)
        self.controller_optimizer = self.optimizer
        self.precision = device.resolve_precision(t.precision)
        self.model, self.core = core, core
        named = stage_module_names(core, self.stage_module)
        self.trained = {n: m for n, m in named.items() if n.endswith(ENCODER_LINEARS)
                        and hasattr(m, "values")}
        self.dynsp_options = {"group": self.groups.dp, "combine_fn": self.combine_metrics,
                              "layer_offset": len(ENCODER_LINEARS) * lay.first_layer}
        self._global_order = [p for g in groups for p in g["params"]]
        name_of = {id(p): n for n, p in core.named_parameters()}
        self._global_names = [[name_of[id(p)] for p in g["params"]] for g in groups]
        self._stage_names = [[name_of[id(p)] for p in g["params"]]
                             for g in self.optimizer.param_groups]
        self._stage_name_set = {n for g in self._stage_names for n in g}
        self._tied = core.bert.embeddings.word_embeddings.weight
        stage = PipelineStage(self.stage_module, lay.stage, lay.stages, device.torch_device,
                              group=self.groups.pp)
        self.schedule = schedule_class(t.pipeline_schedule)(
            stage, n_microbatches=t.gradient_accumulation, loss_fn=self._loss, scale_grads=False)
        self._run: Any = None
        self._losses: list[torch.Tensor] = []

    # ------------------------------------------------------------------ the step
    def step(self, run: "Run", t: int) -> StepResult:
        """All micro-batches of step t through the schedule, then the update. A stop
        request is honoured between steps only (the schedule is one collective call)."""
        c = run.c
        if c.controller is not None:
            c.controller.before_step(t)
        accumulation = self.cfg.training.gradient_accumulation
        batches = [next(run.batches) for _ in range(accumulation)]
        run.timer.add(self.cfg.training.micro_batch_size * accumulation * self.replicas)
        self.run_schedule(run, t, batches)
        self.reduce_gradients()
        self.share_losses(run)
        run.state.micro_step = accumulation
        return optimizer_update(run, t, self)

    def run_schedule(self, run: "Run", t: int, batches: list[dict[str, torch.Tensor]]) -> None:
        """Concatenate the micro-batches (the schedule splits them back, in order) and
        run forward/backward of every micro-batch on this stage."""
        dev = self.device.torch_device
        self._batch = {k: torch.cat([b[k] for b in batches]).to(dev) for k in batches[0]}
        self._run, self._t, self._losses = run, t, []
        lay = self.layout
        args = tuple(self._batch[k] for k in STAGE0_INPUTS) if lay.is_first else ()
        rows = torch.arange(len(self._batch["input_ids"]), device=dev)
        with autocast(self.precision, dev):
            self.schedule.step(*args, target=rows if lay.is_last else None)

    def _loss(self, output: tuple[torch.Tensor, torch.Tensor], rows: torch.Tensor) -> torch.Tensor:
        """The last stage's loss of one micro-batch (`rows` of the concatenated batch):
        the single-process arithmetic, scaled for backward."""
        b, run = self._batch, self._run
        out = pretraining_output(output[0], output[1], b["masked_lm_ids"][rows],
                                 b["masked_lm_weights"][rows], b["next_sentence_label"][rows])
        loss = out.loss
        if run.hooks.loss_multiplier is not None:
            loss = loss * run.hooks.loss_multiplier(self._t)
        self._losses.append(torch.stack([v.detach().float()
                                         for v in (loss, out.mlm_loss, out.nsp_loss)]))
        return run.c.scaler.scale_loss(loss / self.cfg.training.gradient_accumulation)

    def reduce_gradients(self) -> None:
        """Average over the stage's replicas; sum the tied embedding's two halves."""
        params = [p for g in self.optimizer.param_groups for p in g["params"]]
        for p in params:
            if p.grad is None:  # every replica must send the same buffers
                p.grad = torch.zeros_like(p)
        if self.replicas > 1:
            flat = torch.cat([p.grad.reshape(-1) for p in params])
            dist.all_reduce(flat, group=self.groups.dp)
            flat.div_(self.replicas)
            offset = 0
            for p in params:
                n = p.grad.numel()
                p.grad.copy_(flat[offset:offset + n].view_as(p.grad))
                offset += n
        if self.layout.is_first or self.layout.is_last:
            dist.all_reduce(self._tied.grad, group=self.groups.tie)

    def share_losses(self, run: "Run") -> None:
        """The last stage's micro-batch losses reach every stage of the replica (the
        loop averages them over replicas)."""
        lay = self.layout
        accumulation = self.cfg.training.gradient_accumulation
        # The schedule's first call also runs a shape-inference pass through the loss:
        # the step's micro-batches are the last `accumulation` records.
        losses = torch.stack(self._losses[-accumulation:]) if lay.is_last else \
            torch.zeros(accumulation, 3)
        losses = losses.to(self.device.torch_device)
        dist.broadcast(losses, src=lay.rank_of(lay.stages - 1, lay.replica), group=self.groups.stages)
        run.pending_losses.extend(losses.unbind(0))
        flush_losses(run)

    # ------------------------------------------------------------------ across stages
    def clip(self, params: list[nn.Parameter], max_norm: float) -> float:
        """Clip to the single-process global norm: the norm of every parameter's
        gradient norm in the single-process order (the tied weight counted once)."""
        owned = {id(p) for p in params}
        if self.layout.is_last and not self.layout.is_first:
            owned.discard(id(self._tied))  # stage 0 counts it
        norms = torch.zeros(len(self._global_order), device=self.device.torch_device)
        for i, p in enumerate(self._global_order):
            if id(p) in owned and p.grad is not None:
                norms[i] = torch.linalg.vector_norm(p.grad.detach().float())
        dist.all_reduce(norms, group=self.groups.stages)  # one owner per entry: exact sums
        total = torch.linalg.vector_norm(norms)
        if max_norm > 0:
            torch.nn.utils.clip_grads_with_norm_(params, max_norm, total, foreach=False)
        return float(total)

    def combine_metrics(self, metrics: dict[str, Any]) -> dict[str, Any]:
        """A stage's DynSp metrics -> the whole model's (collective over the pipeline)."""
        parts: list[Any] = [None] * self.layout.stages
        dist.all_gather_object(parts, metrics, group=self.groups.stages)
        return merge_stage_metrics(parts)

    # ------------------------------------------------------------------ evaluation
    @torch.no_grad()
    def evaluate_held_out(self, batches: Iterable[dict[str, torch.Tensor]],
                          max_batches: int | None, should_stop: Callable[[], bool]
                          ) -> dict[str, float] | None:
        """Held-out evaluation through the stages, no weights gathered: every rank reads
        the same batches; replica r takes batches r, r + R, ...; stage 0 embeds and runs
        its layers and sends the hidden states (fp32) to the next stage of its replica,
        which runs its own layers, and so on; the last stage computes the losses. Only
        the six sums travel (one all-reduce at the end). A stop request seen by any rank
        abandons it on all (None), between batches."""
        lay, dev = self.layout, self.device.torch_device
        sums = dict.fromkeys(("mlm_loss", "mlm_correct", "mlm_count", "nsp_loss",
                              "nsp_correct", "nsp_count"), 0.0)
        was_training = self.stage_module.training
        self.stage_module.eval()
        try:
            for index, batch in enumerate(batches):
                if max_batches is not None and index >= max_batches:
                    break
                if D.any_rank(should_stop(), self.dist, dev):
                    return None
                if index % self.replicas == lay.replica:
                    self._eval_batch(to_device(batch, dev), sums)
        finally:
            self.stage_module.train(was_training)
        total = torch.tensor(list(sums.values()), dtype=torch.float64)
        dist.all_reduce(total)  # only the last stages hold non-zero sums
        return eval_means(dict(zip(sums, total.tolist())))

    def _eval_batch(self, b: dict[str, torch.Tensor], sums: dict[str, float]) -> None:
        lay, dev = self.layout, self.device.torch_device
        mask, positions = b["attention_mask"], b["masked_lm_positions"]
        if lay.is_first:
            x = b["input_ids"]
        else:
            x = torch.empty(*b["input_ids"].shape, self.cfg.model.hidden_size, device=dev)
            dist.recv(x, src=lay.rank_of(lay.stage - 1, lay.replica))
        with autocast(self.precision, dev):
            out = self.stage_module(x, mask, positions,
                                    b["token_type_ids"] if lay.is_first else None)
        if not lay.is_last:
            dist.send(out[0].float().contiguous(), dst=lay.rank_of(lay.stage + 1, lay.replica))
            return
        accumulate_eval(sums, pretraining_output(out[0], out[1], b["masked_lm_ids"],
                                                 b["masked_lm_weights"], b["next_sentence_label"]))

    # ------------------------------------------------------------------ checkpoints
    def sync_to_host(self) -> None:
        """Nothing to bring anywhere: a stage's weights live in its own process, and a
        checkpoint takes each stage's state from its rank (checkpoint_shard, or gathered
        by checkpoint_files with checkpoint.sharded=false)."""

    def model_state(self) -> dict[str, torch.Tensor]:
        """This stage's entries of the model's state dict (single-process names; the
        tied word embedding under both its names on the first and the last stage)."""
        return {k: v for k, v in self.core.state_dict().items() if not v.is_meta}

    def checkpoint_shard(self, controller: Any | None) -> dict[str, torch.Tensor] | None:
        """This rank's part of a sharded checkpoint (bert_ipu/store/sharded.py); None
        with checkpoint.sharded=false (rank 0 writes gathered files)."""
        return self._shard(controller) if self.cfg.checkpoint.sharded else None

    def _shard(self, controller: Any | None) -> dict[str, torch.Tensor]:
        names = [n for g in self._stage_names for n in g]
        return sharded.shard_of(self.model_state(), self.optimizer.state_dict(), names,
                                None if controller is None else controller.state_dict())

    def checkpoint_files(self, controller: Any | None, scaler: Any) -> dict[str, Any]:
        """The common files rank 0 writes next to the shards: `sharded.pt` (optimizer
        group settings with the single-process parameter order, the controller's
        counters) and `pipeline.json` (the split that wrote it; informational: any
        split resumes it); with checkpoint.sharded=false, every rank's shard is
        gathered to rank 0 instead, as the single-process model.pt, optimizer.pt and
        controller.pt. Collective: every rank's loss scaler must agree (the skip
        decision is global)."""
        scalers: list[Any] = [None] * self.dist.world_size
        dist.all_gather_object(scalers, scaler.state_dict())
        if any(p != scalers[0] for p in scalers):
            raise RuntimeError(f"pipeline: the ranks' loss scalers disagree ({scalers}); "
                               "the skip decision is not global")
        common = sharded.common_of(self.optimizer.state_dict(), self._global_names,
                                   None if controller is None else controller.state_dict())
        layout = {"layers_per_stage": list(self.layout.layers_per_stage), "replicas": self.replicas}
        files = {"pipeline.json": json.dumps(layout)}
        if self.cfg.checkpoint.sharded:
            return {sharded.COMMON: common, **files}
        mine = tree_map(lambda x: x.cpu() if isinstance(x, torch.Tensor) else x,
                        self._shard(controller))
        parts: list[Any] | None = [None] * self.dist.world_size if self.dist.is_main else None
        dist.gather_object(mine, parts, dst=0)
        if not self.dist.is_main:
            return {}
        merged = {k: v for part in parts for k, v in part.items()}
        return {**sharded.classic_from_shard(merged, common), **files}

    def checkpoint_view(self, loaded: dict[str, Any], controller: Any | None) -> dict[str, Any]:
        """Restore this stage's weights, patterns, optimizer and DynSp state from a
        checkpoint of any split (sharded: only this stage's keys are read) or of an
        unpipelined run (its single-process files); returns the rest for the common
        pieces. ValueError (one line) when it holds another model or sparsity."""
        mine = self.model_state()
        shapes = {f"model/{k}": v.shape for k, v in mine.items()}
        if loaded["manifest"].get("sharded"):
            common = loaded[sharded.COMMON]
            wanted = [*shapes, *(k for k in sharded.metadata(loaded["path"])
                                 if self._wants(k, controller))]
            shard = sharded.read(loaded["path"], dict.fromkeys(wanted), shapes,
                                 self.device.torch_device)
        else:  # a single-process checkpoint: its files, in single-process names
            ctl = loaded["controller.pt"]["controller"]
            order = [n for g in self._global_names for n in g]
            shard = sharded.shard_of(loaded["model.pt"], loaded["optimizer.pt"], order, ctl)
            common = sharded.common_of(loaded["optimizer.pt"], self._global_names, ctl)
            missing = next((k for k in shapes if k not in shard), None)
            if missing is not None:
                raise ValueError(f"it holds no {missing} (written for another model)")
            wrong = next((k for k in shapes if shard[k].shape != shapes[k]), None)
            if wrong is not None:
                raise ValueError(f"its {wrong} is {tuple(shard[wrong].shape)}, this run's is "
                                 f"{tuple(shapes[wrong])} (another model or sparsity)")
        with torch.no_grad():
            for key, tensor in mine.items():
                # copy_ bumps the version counter the kernels' pattern caches key on
                tensor.copy_(shard[f"model/{key}"])
        self.optimizer.load_state_dict(sharded.optimizer_state(shard, common, self._stage_names))
        if controller is not None:
            controller.load_state_dict(sharded.controller_state(shard, common, controller.layers))
        return {k: v for k, v in loaded.items() if k not in sharded.SHARDED_FILES}

    def _wants(self, key: str, controller: Any | None) -> bool:
        """Whether shard entry `key` (not a model entry) is this stage's."""
        kind, _, rest = key.partition("/")
        if kind == "optim":
            return rest.rsplit("/", 1)[0] in self._stage_name_set
        if kind == "dynsp" and controller is not None:
            return rest.split("/", 1)[0] in controller.layers
        return False


def merge_stage_metrics(parts: list[dict[str, Any]]) -> dict[str, Any]:
    """Per-stage DynSp metrics (stage order) -> one record, pooled over every layer as the
    single-process controller pools them (sparse_ops.dynsp.metrics.merge_records)."""
    return merge_records(parts)
