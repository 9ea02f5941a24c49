"""Whole-volume inference for 2D and 3D models: `predict_logits`, `predict_probabilities`.

A 2D model sees a volume slice by slice (`SliceBySliceInferer`); a 3D model sees it whole
when it fits in ``roi_size`` and by Gaussian-blended sliding window otherwise
(`SlidingWindowInferer`, MONAI's ``sliding_window_inference``). `predict_logits` takes one
preprocessed volume ``(C, D, H, W)`` and returns ``(K, D, H, W)`` logits, so evaluation,
export checks, explainability and the service share one code path; the inferers work on
batches, as the Trainer's validation does. A "model" is any callable from a ``(B, C, *S)``
tensor to ``(B, K, *S)`` logits: an ``nn.Module``, or an exported file run by
`medseg_helpers.deploy.runtime.load_exported` (e.g. an ONNX Runtime session).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import nn

__all__ = ["Model", "SliceBySliceInferer", "SlidingWindowInferer", "predict_logits",
           "predict_probabilities"]

#: A network or an exported runtime: ``(B, C, *S)`` float32 tensor -> ``(B, K, *S)`` logits.
Model = nn.Module | Callable[[torch.Tensor], torch.Tensor]


class SliceBySliceInferer:
    """Run a 2D model over the slices of volumes: ``(B, C, D, H, W)`` -> ``(B, K, D, H, W)``.

    Slices (axis ``D``) go through the model in chunks of ``batch_size``; 4D input is passed
    through unchanged. Use as ``Trainer(val_inferer=SliceBySliceInferer(32))``.
    """

    def __init__(self, batch_size: int = 32) -> None:
        self.batch_size = batch_size

    def __call__(self, model: Model, image: torch.Tensor) -> torch.Tensor:
        if image.ndim != 5:
            return model(image)
        b, c, d, h, w = image.shape
        slices = image.permute(0, 2, 1, 3, 4).reshape(b * d, c, h, w)
        logits = torch.cat([model(chunk) for chunk in slices.split(self.batch_size)])
        return logits.reshape(b, d, -1, h, w).permute(0, 2, 1, 3, 4)


class SlidingWindowInferer:
    """Run a model on whole images that fit in ``roi_size``, by sliding window otherwise.

    ``(B, C, *S)`` -> ``(B, K, *S)``: when every spatial size is at most ``roi_size``, one
    forward pass; otherwise MONAI's ``sliding_window_inference`` over windows of
    ``roi_size`` (``batch_size`` windows per pass, neighbours overlapping by ``overlap``,
    Gaussian-blended). Use as ``Trainer(val_inferer=SlidingWindowInferer((96, 96, 96)))``.
    """

    def __init__(self, roi_size: Sequence[int], batch_size: int = 4,
                 overlap: float = 0.25) -> None:
        self.roi_size, self.batch_size, self.overlap = tuple(roi_size), batch_size, overlap

    def __call__(self, model: Model, image: torch.Tensor) -> torch.Tensor:
        if all(s <= r for s, r in zip(image.shape[2:], self.roi_size, strict=True)):
            return model(image)
        from monai.inferers import sliding_window_inference

        return sliding_window_inference(image, self.roi_size, self.batch_size, model,
                                        overlap=self.overlap, mode="gaussian")


@torch.no_grad()
def predict_logits(model: Model, image: torch.Tensor, spatial_dims: int, *,
                   roi_size: Sequence[int] | None = None, batch_size: int = 16,
                   overlap: float = 0.25, device: torch.device | str | None = None
                   ) -> torch.Tensor:
    """Logits of ``model`` for one volume.

    Args:
        model: a 2D ``(B, C, H, W)`` or 3D ``(B, C, D, H, W)`` segmentation network, or
            an exported file's runtime (`Model`); it is used as it is (call
            ``model.eval()`` first unless you want dropout active).
        image: ``(C, D, H, W)`` preprocessed volume (float32).
        spatial_dims: 2 (slice by slice along ``D``) or 3.
        roi_size: 3D sliding-window size ``(d, h, w)``; None: the whole volume at once.
        batch_size: slices (2D) or windows (3D) per forward pass.
        overlap: sliding-window overlap (3D).
        device: where to run; None: the model's device (the CPU for a callable that is
            not an ``nn.Module``).

    Returns:
        ``(K, D, H, W)`` float32 logits on the CPU.
    """
    if image.ndim != 4:
        raise ValueError(f"expected one volume (C, D, H, W), got shape {tuple(image.shape)}")
    if spatial_dims not in (2, 3):
        raise ValueError(f"spatial_dims must be 2 or 3, got {spatial_dims}")
    if device is None:
        device = (next(model.parameters()).device if isinstance(model, nn.Module)
                  else torch.device("cpu"))
    batch = image[None].to(device=device, dtype=torch.float32)
    if spatial_dims == 2:
        logits = SliceBySliceInferer(batch_size)(model, batch)
    elif roi_size is None:
        logits = model(batch)
    else:
        logits = SlidingWindowInferer(roi_size, batch_size, overlap)(model, batch)
    return logits[0].float().cpu()


def predict_probabilities(model: Model, image: torch.Tensor, spatial_dims: int,
                          **kwargs) -> torch.Tensor:
    """Softmax of `predict_logits`: ``(K, D, H, W)`` class probabilities that sum to 1."""
    return torch.softmax(predict_logits(model, image, spatial_dims, **kwargs), dim=0)
