"""Tiny Decathlon folders shared by the decathlon, case cache, slice cache, patch and
dataset tests. Not a test module.

`synthetic_mr_dir` writes a synthetic MR set (4 cases of `SHAPE`); `write_decathlon`
writes hand-made folders for geometry, channels and bad input.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from medseg_helpers.data import io
from medseg_helpers.data.io import write_volume
from medseg_helpers.data.synthetic import generate_dataset
from medseg_helpers.data.volume import Volume

SHAPE = (8, 32, 32)  # (Z, Y, X): 4 cases give 32 axial slices


def synthetic_mr_dir(tmp_path_factory) -> Path:
    """A Decathlon folder of 4 synthetic MR cases of `SHAPE` (seed 0)."""
    return generate_dataset(tmp_path_factory.mktemp("data") / "mr", "mr", 4, SHAPE, seed=0)


def count_reads(monkeypatch, fail_at: int | None = None) -> list[str]:
    """Count `io.read_volume` calls (what load_image_label_pair uses); optionally raise
    KeyboardInterrupt on call number ``fail_at`` to simulate Ctrl-C mid-build."""
    calls: list[str] = []
    original = io.read_volume

    def counting(path, **kwargs):
        calls.append(str(path))
        if fail_at is not None and len(calls) == fail_at:
            raise KeyboardInterrupt
        return original(path, **kwargs)

    monkeypatch.setattr(io, "read_volume", counting)
    return calls


def write_decathlon(root: Path, pairs: dict[str, tuple[Volume, Volume]], labels=(0, 1)) -> Path:
    """A Decathlon folder (``./imagesTr/<name>.nii.gz`` entries) holding ``pairs``."""
    for name, (image, label) in pairs.items():
        write_volume(image, root / "imagesTr" / f"{name}.nii.gz")
        write_volume(label, root / "labelsTr" / f"{name}.nii.gz")
    meta = {
        "labels": {str(v): f"class {v}" for v in labels},
        "training": [
            {"image": f"./imagesTr/{n}.nii.gz", "label": f"./labelsTr/{n}.nii.gz"} for n in pairs
        ],
    }
    (root / "dataset.json").write_text(json.dumps(meta))
    return root


def image_label_pair(
    shape=(4, 16, 16), spacing=(2.0, 1.0, 1.0), channels: int = 0, seed: int = 0
) -> tuple[Volume, Volume]:
    """Random image and a label with a class-1 box in the middle of each slice."""
    rng = np.random.default_rng(seed)
    image = rng.normal(100, 20, ((channels,) if channels else ()) + shape).astype(np.float32)
    label = np.zeros(shape, np.uint8)
    z, y, x = shape
    label[:, y // 4 : 3 * y // 4, x // 4 : 3 * x // 4] = 1
    return Volume(image, spacing, (5.0, -3.0, 7.0)), Volume(label, spacing, (5.0, -3.0, 7.0))
