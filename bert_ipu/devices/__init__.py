"""Devices behind one interface (`Device`, see base.py): cpu, cuda, ipu.

    from bert_ipu.devices import resolve_device
    device = resolve_device("auto")        # cuda when available, else cpu

    base.py           Device, the registry (register_device), resolve_device
    torch_devices.py  CpuDevice, CudaDevice
    ipu_device.py     IpuDevice (imports PopTorch only when an IPU run is built)
    ipu.py            the PopTorch step runner (importable only with the Poplar SDK)
    ipu_state.py      the IPU's Adam moments across pattern updates (no PopTorch)
    distributed.py    torchrun data parallelism (ranks, DDP, collectives)
"""
from bert_ipu.devices import ipu_device, torch_devices  # noqa: F401  (register the kinds)
from bert_ipu.devices.base import (
    AUTO, DEVICES, Device, DeviceError, device_kinds, register_device, resolve_device,
)
from bert_ipu.devices.ipu_device import poptorch_available
from bert_ipu.devices.torch_devices import cpu_has_bf16_matmul

__all__ = ["AUTO", "DEVICES", "Device", "DeviceError", "device_kinds", "register_device",
           "resolve_device", "poptorch_available", "cpu_has_bf16_matmul"]
