"""A CPU stand-in for PopTorch: just what bert_ipu/train/ipu_step.py uses, with the behaviour that
matters for DynSp (tests only; the real SDK is not installable here).

The "device" is a float32 copy of the host model, created at the first call (PopTorch
compiles lazily, so host weights loaded before it are used); its weights are rounded to
fp16 after every step, as fp16 weights on an IPU would be, so host (fp16) and device
copies match exactly. Its optimizer state is a torch AdamW whose moments are exposed as
PopART names them in `optimizer.state_dict()["ipu_state"]`: `Accl1___<name>` (m),
`Accl2___<name>` (v), `Step___<name>`; `optimizer.load_state_dict` writes them back
before the next run, as PopTorch does.
"""
from __future__ import annotations

import copy
import importlib.machinery
import types
from typing import Any

import torch

PREFIXES = {"Accl1": "exp_avg", "Accl2": "exp_avg_sq", "Step": "step"}


class _Recorder:
    """Options sections: every method call is recorded and returns the section."""

    def __init__(self, calls: list, section: str) -> None:
        self._calls, self._section = calls, section

    def __getattr__(self, name: str) -> Any:
        if name.startswith("_"):
            raise AttributeError(name)

        def call(*args: Any) -> "_Recorder":
            self._calls.append((f"{self._section}{name}", args))
            return self

        return call


class Options(_Recorder):
    def __init__(self) -> None:
        self.calls: list = []
        super().__init__(self.calls, "")
        self.Training = _Recorder(self.calls, "Training.")
        self.Precision = _Recorder(self.calls, "Precision.")


def BeginBlock(module: torch.nn.Module, user_id: str | None = None,
               ipu_id: int | None = None) -> torch.nn.Module:
    module.fake_ipu_id = ipu_id
    return module


def identity_loss(x: torch.Tensor, reduction: str) -> torch.Tensor:
    return x


class AdamW(torch.optim.AdamW):
    """poptorch.optim.AdamW: host param groups; state_dict() carries the device state."""

    def __init__(self, params: Any, lr: float, betas: tuple, eps: float, loss_scaling: float,
                 accum_type: Any, first_order_momentum_accum_type: Any,
                 second_order_momentum_accum_type: Any, max_grad_norm: float | None) -> None:
        super().__init__(params, lr=lr, betas=betas, eps=eps, foreach=False)
        self.loss_scaling, self.max_grad_norm = loss_scaling, max_grad_norm
        self.executor: PoplarExecutor | None = None
        self.pending: dict | None = None

    def state_dict(self) -> dict:
        state = super().state_dict()
        compiled = self.executor is not None and self.executor.isCompiled()
        state["ipu_state"] = self.executor.read_state() if compiled else None
        state["ipu_param"] = {"lossScaling_FLOAT": torch.tensor(self.loss_scaling)}
        return state

    def load_state_dict(self, state: dict) -> None:
        super().load_state_dict({"state": {}, "param_groups": state["param_groups"]})
        self.pending = dict(state["ipu_state"]) if state.get("ipu_state") else None


class PoplarExecutor:
    def __init__(self, model: torch.nn.Module, options: Options, optimizer: AdamW) -> None:
        self.host, self.options, self.optimizer = model, options, optimizer
        optimizer.executor = self
        self.device: torch.nn.Module | None = None
        self.calls: list[str] = []

    def isCompiled(self) -> bool:
        return self.device is not None

    def _compile(self) -> None:
        self.device = copy.deepcopy(self.host).float()
        host_names = {id(p): n for n, p in self.host.named_parameters()}
        self.params = dict(self.device.named_parameters())
        groups = [{**{k: v for k, v in g.items() if k != "params"},
                   "params": [self.params[host_names[id(p)]] for p in g["params"]]}
                  for g in self.optimizer.param_groups]
        self.device_opt = torch.optim.AdamW(groups, foreach=False)

    def __call__(self, **batch: torch.Tensor) -> tuple[torch.Tensor, ...]:
        if self.device is None:
            self._compile()
        if self.optimizer.pending is not None:
            self.write_state(self.optimizer.pending)
            self.optimizer.pending = None
        for dev, host in zip(self.device_opt.param_groups, self.optimizer.param_groups):
            dev["lr"] = host["lr"]
        self.device.train()
        losses = self.device(**batch)
        losses[0].backward()
        if self.optimizer.max_grad_norm:
            torch.nn.utils.clip_grad_norm_(list(self.params.values()),
                                           self.optimizer.max_grad_norm)
        self.device_opt.step()
        self.device_opt.zero_grad(set_to_none=True)
        with torch.no_grad():
            for p in self.params.values():  # fp16 weights on the device
                p.copy_(p.half().float())
        self.calls.append("run")
        return tuple(t.detach() for t in losses)

    def read_state(self) -> dict[str, torch.Tensor]:
        out = {}
        for name, p in self.params.items():
            for prefix, key in PREFIXES.items():
                if key in self.device_opt.state.get(p, {}):
                    out[f"{prefix}___{name}"] = self.device_opt.state[p][key].clone()
        return out

    def write_state(self, ipu_state: dict[str, torch.Tensor]) -> None:
        self.calls.append("write_state")
        for full, value in ipu_state.items():
            prefix, name = full.split("___", 1)
            self.device_opt.state[self.params[name]][PREFIXES[prefix]] = value.clone()

    def copyWeightsToHost(self) -> None:
        self.calls.append("copyWeightsToHost")
        self._copy(self.device, self.host)

    def copyWeightsToDevice(self) -> None:
        self.calls.append("copyWeightsToDevice")
        if self.device is not None:
            self._copy(self.host, self.device)

    @staticmethod
    @torch.no_grad()
    def _copy(src: torch.nn.Module, dst: torch.nn.Module) -> None:
        tensors = dict(src.named_parameters()) | dict(src.named_buffers())
        for name, t in list(dst.named_parameters()) + list(dst.named_buffers()):
            t.copy_(tensors[name].to(t.dtype))

    def setOptimizer(self, optimizer: AdamW) -> None:
        self.calls.append("setOptimizer")


def trainingModel(model: torch.nn.Module, options: Options | None = None,
                  optimizer: AdamW | None = None) -> PoplarExecutor:
    return PoplarExecutor(model, options or Options(), optimizer)


def make_module() -> types.ModuleType:
    """A fresh `poptorch` module object (install it in sys.modules)."""
    module = types.ModuleType("poptorch")
    module.__spec__ = importlib.machinery.ModuleSpec("poptorch", None)
    module.Options, module.BeginBlock, module.identity_loss = Options, BeginBlock, identity_loss
    module.trainingModel = trainingModel
    module.optim = types.SimpleNamespace(AdamW=AdamW)
    module.ReductionType = types.SimpleNamespace(Mean="Mean")
    module.AutoStage = types.SimpleNamespace(AutoIncrement="AutoIncrement")
    module.PipelinedExecution = lambda stage: ("PipelinedExecution", stage)
    return module
