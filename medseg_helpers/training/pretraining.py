"""Self-supervised pretraining on unlabelled slices, then fine-tuning with few labels.

Labels are expensive, images are not. A pretext task that needs no labels teaches the
network's encoder what the images look like; fine-tuning then starts from those weights
instead of random ones. Here the pretext task is *inpainting with denoising*: random
square patches of a slice are blanked out and Gaussian noise is added, and the same
U-Net (with one output channel per image channel) reconstructs the clean slice. This is
the idea of context encoders (Pathak et al. 2016, CVPR) and Models Genesis (Zhou et al.
2019, MICCAI / MedIA 2021), scaled down to run in seconds.

Weights move from the pretext network to the segmentation network by parameter name;
only entries whose names and shapes agree move (`transferable_weights`), so the output
layer (1 channel for reconstruction, K classes for segmentation) stays freshly initialised.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

logger = logging.getLogger(__name__)

__all__ = ["InpaintingDataset", "PretrainResult", "corrupt_image", "pretrain_inpainting",
           "transferable_weights"]


def corrupt_image(image: np.ndarray, rng: np.random.Generator, num_holes: int = 4,
                  hole_fraction: float = 0.2, noise_std: float = 0.2
                  ) -> tuple[np.ndarray, np.ndarray]:
    """Blank out square holes and add Gaussian noise (the pretext task's input).

    Args:
        image: ``(C, H, W)`` float32, z-scored (so 0 is the mean intensity, what a hole
            is filled with).
        rng: the random generator (seeded by the caller).
        num_holes: squares blanked per image.
        hole_fraction: side of a square as a fraction of ``min(H, W)``.
        noise_std: standard deviation of the added noise (in z-score units).

    Returns:
        ``(corrupted (C, H, W) float32, hole_mask (1, H, W) float32 in {0, 1})``.
    """
    channels, height, width = image.shape
    side = max(1, int(round(hole_fraction * min(height, width))))
    mask = np.zeros((1, height, width), dtype=np.float32)
    for _ in range(num_holes):
        top = int(rng.integers(0, height - side + 1))
        left = int(rng.integers(0, width - side + 1))
        mask[:, top:top + side, left:left + side] = 1
    noisy = image + rng.normal(0.0, noise_std, image.shape).astype(np.float32)
    return (noisy * (1 - mask)).astype(np.float32), mask


class InpaintingDataset(Dataset):
    """Unlabelled slices of some patients as ``{"image": corrupted, "target": clean}`` pairs.

    Args:
        cache: a `slice_cache.SliceCache` (z-scored slices ``(N, C, H, W)``); its labels are
            never read.
        patient_ids: patients whose slices are used (any split except test).
        seed: holes and noise of item ``i`` in epoch ``e`` come from ``seed``, ``e`` and
            ``i``, so runs repeat exactly; call `set_epoch` for new holes each epoch.
        **corruption: passed to `corrupt_image`.

    Items: ``"image"`` and ``"target"`` ``(C, H, W)`` float32, ``"mask"`` ``(1, H, W)``.
    """

    def __init__(self, cache: Any, patient_ids: Sequence[str], seed: int = 0,
                 **corruption: Any) -> None:
        unknown = sorted(set(patient_ids) - set(cache.cases))
        if unknown:
            raise KeyError(f"patients not in the cache: {unknown[:5]}")
        self.cache, self.seed, self.corruption, self.epoch = cache, seed, corruption, 0
        self.rows = np.concatenate([np.arange(cache.cases[p].start, cache.cases[p].stop)
                                    for p in patient_ids]) if patient_ids else np.zeros(0, int)

    def set_epoch(self, epoch: int) -> None:
        """Use new holes and noise for ``epoch``."""
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        clean = np.asarray(self.cache.images[self.rows[index]], dtype=np.float32)
        rng = np.random.default_rng([self.seed, self.epoch, int(index)])
        image, mask = corrupt_image(clean, rng, **self.corruption)
        return {"image": torch.from_numpy(image), "target": torch.from_numpy(clean.copy()),
                "mask": torch.from_numpy(mask)}


@dataclass
class PretrainResult:
    """What `pretrain_inpainting` returns.

    Attributes:
        model: the pretext network (eval mode), outputs ``(B, C, H, W)`` reconstructions.
        losses: mean training loss per epoch.
        steps: optimiser steps taken.
    """

    model: nn.Module
    losses: list[float] = field(default_factory=list)
    steps: int = 0


def pretrain_inpainting(model: nn.Module, dataset: InpaintingDataset, *, steps: int,
                        batch_size: int = 16, lr: float = 1e-3, hole_weight: float = 4.0,
                        device: torch.device | str = "cpu", seed: int = 0) -> PretrainResult:
    """Train ``model`` to reconstruct clean slices from corrupted ones.

    The loss is the mean squared error over all pixels, with pixels inside the holes
    weighted ``hole_weight`` times more (the part that needs context to solve).

    Args:
        model: maps ``(B, C, H, W)`` to ``(B, C, H, W)`` (e.g. ``build_model("unet", 2,
            C, C)``); trained in place.
        dataset: an `InpaintingDataset`.
        steps: optimiser steps (whole epochs are run until this many steps are done).
        batch_size: slices per step. lr: Adam learning rate. seed: data order.
        hole_weight: loss weight of hole pixels relative to the others (>= 1).
        device: where to train.

    Raises:
        ValueError: ``steps < 1`` or an empty dataset.
    """
    if steps < 1 or len(dataset) == 0:
        raise ValueError(f"need steps >= 1 and a non-empty dataset, got steps={steps}, "
                         f"{len(dataset)} slices")
    device = torch.device(device)
    model.to(device).train()
    optimizer = torch.optim.Adam(model.parameters(), lr=lr)
    result, epoch = PretrainResult(model), 0
    while result.steps < steps:
        dataset.set_epoch(epoch)
        loader = DataLoader(dataset, batch_size=batch_size, shuffle=True,
                            generator=torch.Generator().manual_seed(seed + epoch))
        total, count = 0.0, 0
        for batch in loader:
            image, target = batch["image"].to(device), batch["target"].to(device)
            weight = 1 + (hole_weight - 1) * batch["mask"].to(device)
            loss = (weight * (model(image) - target) ** 2).mean()
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            total, count, result.steps = total + float(loss.detach()), count + 1, result.steps + 1
            if result.steps >= steps:
                break
        result.losses.append(total / max(count, 1))
        logger.info("pretext epoch %d: loss %.4f", epoch, result.losses[-1])
        epoch += 1
    model.eval()
    return result


def transferable_weights(source: Mapping[str, torch.Tensor] | nn.Module, target: nn.Module,
                         prefixes: Sequence[str] | None = None) -> dict[str, torch.Tensor]:
    """The entries of ``source`` that ``target`` can load: same name and same shape.

    Args:
        source: a state dict or a model (e.g. the pretext network).
        target: the model to initialise (e.g. the segmentation U-Net).
        prefixes: keep only names starting with one of these (e.g. ``("stem.",
            "downs.")`` for the encoder of `models.UNet`); None keeps every match.

    Returns:
        A state dict for ``target.load_state_dict(..., strict=False)`` (tensors copied).
    """
    state = source.state_dict() if isinstance(source, nn.Module) else source
    wanted = target.state_dict()
    return {name: value.detach().clone() for name, value in state.items()
            if name in wanted and wanted[name].shape == value.shape
            and (prefixes is None or name.startswith(tuple(prefixes)))}
