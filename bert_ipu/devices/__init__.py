"""Devices behind one interface (`Device`, see base.py): cpu, cuda, ipu.

    from bert_ipu.devices import resolve_device
    device = resolve_device("auto")        # cuda when available, else cpu

    base.py           Device, the registry (register_device), resolve_device
    torch_devices.py  CpuDevice, CudaDevice
    ipu_device.py     IpuDevice (imports PopTorch only when an IPU run is built)
    ipu_state.py      the IPU's Adam moments across pattern updates (no PopTorch)
    distributed.py    torchrun data parallelism (ranks, DDP, collectives)
    pipeline.py       pipeline schedules (torch.distributed.pipelining)

A new device is one module here named `*_device.py` (or `*_devices.py`) with a
`@register_device` class: every such module is imported below, so nothing else changes.
"""
import importlib as _importlib
import pkgutil as _pkgutil

for _module in _pkgutil.iter_modules(__path__):  # register every device kind
    if _module.name.endswith(("_device", "_devices")):
        _importlib.import_module(f"{__name__}.{_module.name}")
from bert_ipu.devices.base import (
    AUTO, DEVICES, Device, DeviceError, device_kinds, register_device, resolve_device,
)
from bert_ipu.devices.ipu_device import poptorch_available
from bert_ipu.devices.torch_devices import cpu_has_bf16_matmul

__all__ = ["AUTO", "DEVICES", "Device", "DeviceError", "device_kinds", "register_device",
           "resolve_device", "poptorch_available", "cpu_has_bf16_matmul"]
