"""Save and load a network in the MONAI bundle layout, the format of the MONAI Model Zoo.

A pretrained model from a zoo is more than weights: it says what it is, what it expects
and how to build it. A MONAI bundle is a folder:

* ``configs/metadata.json``: what the model is: name, version, task, the input it
  expects and the output it gives (``network_data_format``), class names, intended use,
  licence, authors and the library versions it was made with;
* ``configs/inference.json``: how to build it: ``network_def``, a class or function path
  (``_target_``) and its arguments, which MONAI's ``ConfigParser`` instantiates;
* ``models/model.pt``: the weights, a ``state_dict`` (loaded with ``weights_only=True``:
  no pickled code runs);
* ``docs/README.md``: how to use it, on what data it was trained, and its limits.

`save_bundle` writes one (every file atomically); `load_bundle` builds the network from
``inference.json`` with ``monai.bundle.ConfigParser``, offline, exactly as a downloaded
zoo bundle is loaded, and loads its weights. A zoo model then starts a fine-tuning as
any other weights do (`medseg_helpers.training.pretraining.transferable_weights` keeps the
layers whose shapes fit the new task).
"""

from __future__ import annotations

import json
import os
import platform
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from medseg_helpers.fileutil import atomic_path, to_json_ready, write_text_atomic

__all__ = ["BUNDLE_FILES", "bundle_metadata", "load_bundle", "save_bundle"]

PathLike = str | os.PathLike
#: The files `save_bundle` writes and `load_bundle` reads, relative to the bundle folder.
BUNDLE_FILES = ("configs/metadata.json", "configs/inference.json", "models/model.pt",
                "docs/README.md")


def bundle_metadata(*, name: str, version: str, description: str, class_names: Sequence[str],
                    in_channels: int, spatial_dims: int, authors: str, license: str,
                    data_source: str, intended_use: str) -> dict[str, Any]:
    """``metadata.json`` in the fields of MONAI's bundle metadata schema.

    Args:
        class_names: every class, background first (the output channels).
        in_channels, spatial_dims: the input ``(B, in_channels, *S)``, ``S`` of length
            ``spatial_dims``.
        license, data_source, intended_use: say them plainly: a model inherits the terms of
            its training data, and a teaching model is not a clinical device.
    """
    import monai
    import numpy as np

    return {
        "version": version, "name": name, "description": description, "authors": authors,
        "license": license, "data_source": data_source, "intended_use": intended_use,
        "task": "segmentation",
        "monai_version": monai.__version__, "pytorch_version": torch.__version__,
        "numpy_version": np.__version__, "python_version": platform.python_version(),
        "network_data_format": {
            "inputs": {"image": {
                "type": "image", "format": "magnitude", "num_channels": in_channels,
                "spatial_dims": spatial_dims, "dtype": "float32",
                "channel_def": {str(i): f"channel {i}" for i in range(in_channels)}}},
            "outputs": {"pred": {
                "type": "image", "format": "segmentation", "num_channels": len(class_names),
                "spatial_dims": spatial_dims, "dtype": "float32",
                "channel_def": {str(i): c for i, c in enumerate(class_names)}}}},
    }


def save_bundle(folder: PathLike, model: nn.Module, network_def: Mapping[str, Any],
                metadata: Mapping[str, Any], readme: str,
                extra_config: Mapping[str, Any] | None = None) -> Path:
    """Write ``model`` as a MONAI bundle (see the module docstring).

    Args:
        folder: the bundle folder (created).
        model: its weights are saved (moved to the CPU).
        network_def: ``{"_target_": "package.module.Class_or_function", **arguments}`` that
            rebuilds an untrained copy of ``model``.
        metadata: from `bundle_metadata`.
        readme: ``docs/README.md``.
        extra_config: more entries for ``inference.json`` (e.g. the preprocessing).

    Returns:
        ``folder`` as a `Path`.

    Raises:
        ValueError: ``network_def`` without ``_target_``.
    """
    if "_target_" not in network_def:
        raise ValueError("network_def needs a '_target_' (the class or function to call)")
    folder = Path(folder)
    config = {"imports": [], "network_def": dict(network_def), **dict(extra_config or {})}
    write_text_atomic(folder / "configs" / "inference.json",
                      json.dumps(to_json_ready(config), indent=1) + "\n")
    write_text_atomic(folder / "configs" / "metadata.json",
                      json.dumps(to_json_ready(dict(metadata)), indent=1) + "\n")
    write_text_atomic(folder / "docs" / "README.md", readme.rstrip() + "\n")
    state = {name: tensor.detach().cpu() for name, tensor in model.state_dict().items()}
    (folder / "models").mkdir(parents=True, exist_ok=True)
    with atomic_path(folder / "models" / "model.pt") as tmp:
        torch.save(state, tmp)
    return folder


def load_bundle(folder: PathLike, device: str | torch.device = "cpu"
                ) -> tuple[nn.Module, dict[str, Any]]:
    """Build a bundle's network with MONAI's ``ConfigParser`` and load its weights.

    Returns:
        The network in eval mode on ``device``, and ``metadata.json`` as a dict.

    Raises:
        FileNotFoundError: a bundle file is missing (named, with the folder).
    """
    from monai.bundle import ConfigParser

    folder = Path(folder)
    missing = [name for name in BUNDLE_FILES[:3] if not (folder / name).is_file()]
    if missing:
        raise FileNotFoundError(f"{folder}: not a bundle, missing {', '.join(missing)}")
    parser = ConfigParser()
    parser.read_config(str(folder / "configs" / "inference.json"))
    network = parser.get_parsed_content("network_def")
    state = torch.load(folder / "models" / "model.pt", map_location=device, weights_only=True)
    network.load_state_dict(state)
    metadata = json.loads((folder / "configs" / "metadata.json").read_text(encoding="utf-8"))
    return network.to(device).eval(), metadata
