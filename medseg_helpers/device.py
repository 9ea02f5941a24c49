"""Choosing a device and seeding, the same way in every notebook."""

from __future__ import annotations

import functools
import os
import random
from typing import Any

import numpy as np
import torch

DEVICE_ENV_VAR = "MEDSEG_DEVICE"


def get_device(preferred: str | None = None) -> torch.device:
    """Return the best available device: CUDA, then Apple MPS, then CPU.

    Args:
        preferred: ``"cuda"``, ``"cuda:1"``, ``"mps"`` or ``"cpu"`` to force a choice.
            Defaults to the ``MEDSEG_DEVICE`` environment variable, then automatic.

    Raises:
        RuntimeError: if the requested device is not available on this machine.
    """
    preferred = preferred or os.environ.get(DEVICE_ENV_VAR) or None
    if preferred:
        device = torch.device(preferred)
        if device.type == "cuda" and not torch.cuda.is_available():
            raise RuntimeError(f"{preferred!r} requested but no CUDA device is available")
        if device.type == "mps" and not _mps_available():
            raise RuntimeError(f"{preferred!r} requested but Apple MPS is not available")
        return device
    if torch.cuda.is_available():
        return torch.device("cuda")
    if _mps_available():
        return torch.device("mps")
    return torch.device("cpu")


def _mps_available() -> bool:
    backend = getattr(torch.backends, "mps", None)
    return bool(backend is not None and backend.is_available())


def seed_everything(seed: int, deterministic: bool = False) -> None:
    """Seed Python, NumPy and PyTorch (all devices).

    Args:
        seed: the seed.
        deterministic: also ask cuDNN and PyTorch for deterministic kernels (slower;
            some operations then raise if they have no deterministic version).
    """
    random.seed(seed)
    np.random.seed(seed)  # noqa: NPY002 - seeds legacy global-state code (e.g. albumentations)
    torch.manual_seed(seed)
    if deterministic:
        torch.backends.cudnn.benchmark = False
        torch.use_deterministic_algorithms(True, warn_only=True)


#: CPU features that decide which inference and training paths are fast: int8 dot products
#: (VNNI), native bfloat16 (AVX-512 BF16) and Intel's matrix units (AMX).
CPU_FEATURES = ("avx2", "avx512f", "avx_vnni", "avx512_vnni", "avx512_bf16", "amx_bf16",
                "amx_int8")


@functools.cache
def cpu_description() -> dict[str, Any]:
    """The CPU's model name and which of `CPU_FEATURES` it has (Linux; elsewhere the
    features list is empty and the name is ``platform.processor()``).

    Returns:
        ``{"model": str, "features": [flag, ...]}`` in `CPU_FEATURES` order.
    """
    import platform

    model, flags = platform.processor() or "unknown", set()
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as cpuinfo:
            for line in cpuinfo:
                key, _, value = line.partition(":")
                if key.strip() == "model name":
                    model = value.strip()
                elif key.strip() == "flags":
                    flags = set(value.split())
                    break
    except OSError:
        pass
    return {"model": model, "features": [f for f in CPU_FEATURES if f in flags]}


def cpu_has_native_bf16() -> bool:
    """Whether the CPU computes bfloat16 in hardware (AVX-512 BF16 or AMX): there
    ``torch.autocast("cpu", torch.bfloat16)`` speeds up convolutions; elsewhere it is
    emulated and slower than float32."""
    return bool({"avx512_bf16", "amx_bf16"} & set(cpu_description()["features"]))


def describe_environment() -> dict[str, str]:
    """Versions of Python and the course's main libraries, and the chosen device.

    Returns:
        ``{name: version}``; a library that is not installed shows ``"not installed"``.
    """
    import importlib.metadata
    import platform

    info = {"python": platform.python_version(), "platform": platform.platform(terse=True)}
    for package in ("torch", "monai", "albumentations", "SimpleITK", "nibabel", "numpy"):
        try:
            info[package] = importlib.metadata.version(package)
        except importlib.metadata.PackageNotFoundError:
            info[package] = "not installed"
    info["device"] = str(get_device())
    info["cpu threads"] = str(torch.get_num_threads())
    cpu = cpu_description()
    info["cpu"] = f"{cpu['model']} ({', '.join(cpu['features']) or 'no AVX2'})"
    return info
