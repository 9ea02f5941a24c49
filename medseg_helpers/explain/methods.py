"""Attribution maps for segmentation networks: Grad-CAM, occlusion sensitivity and LIME.

A classifier explains one number (a class score). A segmentation network outputs a score per
voxel, so each method here first turns the output into one number, the **target**: for a
class ``c`` and a region ``R`` (default: the voxels predicted as ``c``),

* Grad-CAM uses the sum of the class-``c`` logits over ``R`` (Vinogradova, Dibrov and Myers
  2020, "Towards interpretable semantic segmentation via gradient-weighted class activation
  mapping", AAAI);
* occlusion and LIME use the mean class-``c`` probability over ``R`` (`region_score`), which
  stays in [0, 1] whatever the size of ``R``.

Layout: images ``(B, C, H, W)`` (2D) or ``(B, C, D, H, W)`` (3D), spatial axes in array order.
Maps come back with the input's spatial shape. Uncertainty maps (MC dropout, test-time
augmentation) live in :mod:`medseg_helpers.explain.uncertainty`.

Sanity checks matter: Adebayo et al. (2018), "Sanity checks for saliency maps", NeurIPS,
showed that some saliency maps barely change when the model's weights are randomised, so they
explain the image, not the model. `reinitialised_copy` and `rank_correlation` run that check.
"""

from __future__ import annotations

import copy
import logging
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

logger = logging.getLogger(__name__)

__all__ = ["LimeResult", "RegionScore", "default_target_layer", "grad_cam", "lime_superpixels",
           "occlusion_sensitivity", "rank_correlation", "region_score", "reinitialised_copy",
           "resolve_layer", "show_heatmap"]


# --------------------------------------------------------------------------- shared pieces
@contextmanager
def eval_mode(model: nn.Module) -> Iterator[nn.Module]:
    """Put ``model`` in eval mode for the block and restore every module's mode after."""
    modes = {m: m.training for m in model.modules()}
    model.eval()
    try:
        yield model
    finally:
        for module, training in modes.items():
            module.train(training)


def _check_image(model: nn.Module, image: torch.Tensor) -> None:
    dims = getattr(model, "spatial_dims", None)
    if image.ndim not in (4, 5) or (dims is not None and image.ndim != dims + 2):
        want = "(B, C, H, W) or (B, C, D, H, W)" if dims is None else \
            ("(B, C, H, W)" if dims == 2 else "(B, C, D, H, W)")
        raise ValueError(f"expected an image batch {want}, got shape {tuple(image.shape)}")


def _region_mask(logits: torch.Tensor, target_class: int,
                 region: torch.Tensor | None) -> torch.Tensor:
    """Float mask ``(B, 1, *S)``: ``region`` or the voxels predicted as ``target_class``."""
    if not 0 <= target_class < logits.shape[1]:
        raise ValueError(f"target_class {target_class} out of range for "
                         f"{logits.shape[1]} output classes")
    if region is None:
        mask = logits.argmax(1, keepdim=True) == target_class
    else:
        mask = torch.as_tensor(region, device=logits.device).bool()
        if mask.ndim == logits.ndim - 1:
            mask = mask[:, None]
        if mask.shape[2:] != logits.shape[2:] or mask.shape[0] != logits.shape[0]:
            raise ValueError(f"region of shape {tuple(region.shape)} does not match the "
                             f"logits {tuple(logits.shape)}; expected (B, *S)")
    return mask.to(logits.dtype)


def region_score(probs: torch.Tensor, target_class: int, region: torch.Tensor) -> torch.Tensor:
    """Mean probability of ``target_class`` over ``region``, per image.

    Args:
        probs: ``(B, K, *S)`` softmax probabilities.
        target_class: class index in ``[0, K)``.
        region: ``(B, 1, *S)`` or ``(1, 1, *S)`` 0/1 mask; an empty region scores 0.

    Returns:
        ``(B,)`` scores in [0, 1].
    """
    mask = region.to(probs.dtype)
    dims = tuple(range(1, probs.ndim))
    total = (probs[:, target_class : target_class + 1] * mask).sum(dims)
    return total / mask.sum(dims).clamp_min(1.0)


class RegionScore(nn.Module):
    """Wrap a segmentation network as a one-output "classifier" for attribution methods.

    ``forward(x (B, C, *S)) -> (B, 1)``: the mean softmax probability of ``target_class`` over
    the fixed ``region (*S)`` (0/1). This is what MONAI's ``OcclusionSensitivity`` (written for
    classifiers) needs to explain a segmentation.
    """

    def __init__(self, model: nn.Module, target_class: int, region: torch.Tensor) -> None:
        super().__init__()
        self.model, self.target_class = model, target_class
        self.register_buffer("region", region.float()[None, None])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        probs = torch.softmax(self.model(x), dim=1)
        return region_score(probs, self.target_class, self.region)[:, None]


# --------------------------------------------------------------------------------- Grad-CAM
def default_target_layer(model: nn.Module) -> str:
    """The layer Grad-CAM uses by default: the bottleneck of the course `UNet`.

    The bottleneck (``downs.<depth-1>``, at ``1/2**depth`` resolution) has the most semantic
    features and the coarsest maps; ``ups.<depth-1>.block`` (the last decoder block, full
    resolution) gives sharp maps that mostly repeat the prediction.

    Raises:
        ValueError: for models other than `medseg_helpers.networks.UNet`; pass ``layer=``.
    """
    from medseg_helpers.networks.unet import UNet

    if isinstance(model, UNet):
        return f"downs.{model.depth - 1}"
    raise ValueError(f"no default Grad-CAM layer for {type(model).__name__}: pass layer= "
                     "with a module name from model.named_modules()")


def resolve_layer(model: nn.Module, layer: str | nn.Module | None = None) -> nn.Module:
    """The module ``layer`` names (dotted path as in ``named_modules``), or the default.

    Raises:
        ValueError: no module of that name (the message lists a few valid names).
    """
    if isinstance(layer, nn.Module):
        return layer
    name = default_target_layer(model) if layer is None else layer
    modules = dict(model.named_modules())
    if name not in modules:
        names = [n for n in modules if n and n.count(".") <= 1]
        raise ValueError(f"model has no layer {name!r}; e.g. {', '.join(names[:12])}")
    return modules[name]


def grad_cam(model: nn.Module, image: torch.Tensor, target_class: int,
             region: torch.Tensor | None = None, layer: str | nn.Module | None = None,
             ) -> torch.Tensor:
    """Grad-CAM of a segmentation target (Selvaraju et al. 2017; Vinogradova et al. 2020).

    With ``A_k`` the feature maps of ``layer`` and ``y`` the target (the sum of the
    ``target_class`` logits over ``region``), the map is ``ReLU(sum_k alpha_k A_k)`` with
    ``alpha_k`` the spatial mean of ``dy/dA_k``; it is upsampled (bi/trilinear) to the input
    size and divided by its maximum, per image.

    Args:
        model: 2D or 3D segmentation network; run in eval mode (its modes are restored).
        image: ``(B, C, H, W)`` or ``(B, C, D, H, W)`` float input.
        target_class: class index to explain.
        region: ``(B, *S)`` bool mask of the voxels whose logits are summed; None: the voxels
            the model predicts as ``target_class``.
        layer: module or module name (``"downs.3"``, ``"ups.3.block"``); None:
            `default_target_layer`.

    Returns:
        ``(B, *S)`` float32 maps in [0, 1] on ``image``'s device; all zeros for an image whose
        region is empty or whose gradients are all negative (logged).
    """
    _check_image(model, image)
    module = resolve_layer(model, layer)
    store: dict[str, torch.Tensor] = {}

    def keep(_module: nn.Module, _inputs: tuple, output: torch.Tensor) -> None:
        store["activation"] = output

    handle = module.register_forward_hook(keep)
    try:
        with eval_mode(model), torch.enable_grad():
            x = image.detach().clone().requires_grad_(True)  # a graph even if weights frozen
            logits = model(x)
            mask = _region_mask(logits.detach(), target_class, region)
            score = (logits[:, target_class : target_class + 1] * mask).sum()
            activation = store["activation"]
            (grads,) = torch.autograd.grad(score, activation)
    finally:
        handle.remove()
    spatial = tuple(range(2, activation.ndim))
    weights = grads.mean(dim=spatial, keepdim=True)
    cam = F.relu((weights * activation.detach()).sum(dim=1, keepdim=True))
    mode = "bilinear" if cam.ndim == 4 else "trilinear"
    cam = F.interpolate(cam, size=image.shape[2:], mode=mode, align_corners=False)[:, 0]
    peak = cam.flatten(1).amax(1).view(-1, *[1] * (cam.ndim - 1))
    if not bool((peak > 0).all()):
        logger.info("Grad-CAM is zero for %d image(s): empty region or no positive evidence",
                    int((peak <= 0).sum()))
    return (cam / peak.clamp_min(1e-12)).float()


def reinitialised_copy(model: nn.Module, seed: int = 0) -> nn.Module:
    """A deep copy of ``model`` with every layer's parameters re-initialised (``seed``).

    The model-randomisation sanity check of Adebayo et al. (2018): an explanation method that
    depends on the model must give different maps for this copy. Normalisation statistics
    (running mean/var) are reset too.
    """
    clone = copy.deepcopy(model)
    generator_state = torch.random.get_rng_state()
    torch.manual_seed(seed)
    try:
        for module in clone.modules():
            if hasattr(module, "reset_parameters"):
                module.reset_parameters()
            if hasattr(module, "reset_running_stats"):
                module.reset_running_stats()
    finally:
        torch.random.set_rng_state(generator_state)
    return clone


def rank_correlation(a: np.ndarray | torch.Tensor, b: np.ndarray | torch.Tensor) -> float:
    """Spearman rank correlation of two maps of the same shape (1: same ranking).

    Adebayo et al. (2018) compare maps this way. Raises ``ValueError`` on shape mismatch.
    """
    from scipy.stats import spearmanr

    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    if a.shape != b.shape:
        raise ValueError(f"maps differ in shape: {a.shape} vs {b.shape}")
    if np.ptp(a) == 0 or np.ptp(b) == 0:
        return float("nan")
    return float(spearmanr(a.ravel(), b.ravel())[0])


# ------------------------------------------------------------------------------- occlusion
def occlusion_sensitivity(model: nn.Module, image: torch.Tensor, target_class: int,
                          region: torch.Tensor | None = None, mask_size: int = 8,
                          overlap: float = 0.5, mode: str | float = "gaussian",
                          roi: tuple[slice, ...] | None = None, n_batch: int = 16,
                          ) -> torch.Tensor:
    """How much hiding each part of the image lowers the target score (Zeiler and Fergus 2014).

    A patch of ``mask_size`` voxels slides over the image (MONAI's
    ``monai.visualize.OcclusionSensitivity``); for every position the model sees the image with
    that patch occluded, and the target is the mean ``target_class`` probability over
    ``region``. Returned is ``score(original) - score(occluded)``, averaged over the patches
    covering each voxel: positive where the voxel's content supported the prediction.

    Args:
        model: 2D or 3D segmentation network (eval mode is used).
        image: ``(1, C, *S)``; MONAI handles one image at a time.
        target_class: class index to explain.
        region: ``(1, *S)`` or ``(*S)`` bool mask; None: voxels predicted as ``target_class``.
        mask_size: occluding patch edge in voxels; the map's detail depends on it.
        overlap: patch overlap in [0, 1).
        mode: what replaces the patch: ``"gaussian"`` (multiplied by 1 - a Gaussian, so 0 at
            the centre), ``"mean_patch"``, ``"mean_img"`` or a constant value.
        roi: one ``slice(start, stop)`` per spatial axis: occlude only there (the model still
            sees the whole image); the cost grows with the ROI's size over the patch's.
        n_batch: occluded images per forward pass.

    Returns:
        ``(*S)`` float32 map of score drops (can be negative); NaN outside ``roi``.
    """
    from monai.visualize import OcclusionSensitivity

    _check_image(model, image)
    if image.shape[0] != 1:
        raise ValueError(f"occlusion works on one image (1, C, *S), got batch {image.shape[0]}")
    spatial = image.shape[2:]
    roi = tuple(slice(None) for _ in spatial) if roi is None else tuple(roi)
    if len(roi) != len(spatial):
        raise ValueError(f"roi needs one slice per spatial axis {tuple(spatial)}, got {roi}")
    bounds = [r.indices(n)[:2] for r, n in zip(roi, spatial, strict=True)]
    if any(stop - start < 1 for start, stop in bounds):
        raise ValueError(f"roi {roi} is empty for spatial shape {tuple(spatial)}")
    b_box = [v for start, stop in bounds for v in (start, stop)]  # MONAI: min, max per axis
    with eval_mode(model), torch.no_grad():
        logits = model(image)
        mask = _region_mask(logits, target_class, None if region is None else
                            torch.as_tensor(region).reshape(1, *image.shape[2:]))
        scorer = RegionScore(model, target_class, mask[0, 0]).to(image.device)
        baseline = scorer(image)[0, 0]
        occluder = OcclusionSensitivity(scorer, mask_size=mask_size, n_batch=n_batch,
                                        verbose=False, mode=mode, overlap=overlap, activate=False)
        with warnings.catch_warnings():  # MONAI 1.6 indexes with lists; torch warns, same result
            warnings.filterwarnings("ignore", "Using a non-tuple sequence", UserWarning)
            occluded, _ = occluder(image, b_box=b_box)
    drop = torch.full(tuple(spatial), float("nan"), device=image.device)
    inside = tuple(slice(start, stop) for start, stop in bounds)
    drop[inside] = baseline - occluded.as_tensor()[0, 0]
    return drop


# ------------------------------------------------------------------------------------ LIME
@dataclass
class LimeResult:
    """A LIME explanation over superpixels.

    Attributes:
        segments: ``(*S)`` int superpixel index per voxel, ``0 .. n-1``.
        weights: ``(n,)`` ridge coefficient per superpixel: the change of the target score
            when that superpixel is present rather than replaced.
        map: ``(*S)`` float32 ``weights[segments]``.
        intercept: score predicted with every superpixel removed.
        r2: weighted R² of the linear surrogate on its samples (how faithful it is).
        base_score: target score of the unperturbed image.
    """

    segments: np.ndarray
    weights: np.ndarray
    map: np.ndarray
    intercept: float
    r2: float
    base_score: float


def lime_superpixels(model: nn.Module, image: torch.Tensor, target_class: int,
                     region: torch.Tensor | None = None, n_segments: int = 50,
                     compactness: float = 0.1, n_samples: int = 200, keep_prob: float = 0.5,
                     fill: float | None = None, kernel_width: float = 0.25, alpha: float = 1.0,
                     batch_size: int = 16, seed: int = 0) -> LimeResult:
    """LIME with SLIC superpixels (Ribeiro, Singh and Guestrin 2016; Achanta et al. 2012).

    The image is cut into superpixels; ``n_samples`` random subsets of them are kept (each
    with probability ``keep_prob``; the first sample keeps all), the rest replaced by
    ``fill``; a ridge regression of the target score (mean ``target_class`` probability over
    ``region``) on the 0/1 presence vector, weighted by the LIME kernel
    ``exp(-d**2 / kernel_width**2)`` of the cosine distance ``d`` to the full image, gives one
    weight per superpixel.

    Args:
        model: 2D or 3D segmentation network (eval mode is used).
        image: ``(1, C, *S)``.
        target_class: class index to explain.
        region: ``(1, *S)`` or ``(*S)`` bool mask; None: voxels predicted as ``target_class``.
        n_segments: approximate number of SLIC superpixels.
        compactness: SLIC compactness on the image rescaled to [0, 1] (higher: squarer).
        n_samples: perturbed images (forward passes).
        keep_prob: probability that a superpixel is kept in a sample.
        fill: value of removed superpixels; None: the image's mean per channel.
        kernel_width: LIME kernel width on the cosine distance.
        alpha: ridge regularisation.
        batch_size: perturbed images per forward pass.
        seed: seeds the random subsets (SLIC is deterministic).

    Returns:
        a `LimeResult`. The weights change with ``seed`` (LIME's instability): compare seeds.
    """
    from skimage.segmentation import slic
    from sklearn.linear_model import Ridge

    _check_image(model, image)
    if image.shape[0] != 1:
        raise ValueError(f"LIME works on one image (1, C, *S), got batch {image.shape[0]}")
    if n_samples < 2 or not 0 < keep_prob < 1:
        raise ValueError(f"need n_samples >= 2 and 0 < keep_prob < 1, got {n_samples}, "
                         f"{keep_prob}")
    array = image[0].detach().cpu().numpy().astype(np.float64)  # (C, *S)
    low, high = np.percentile(array, [1, 99])
    scaled = np.clip((array - low) / max(high - low, 1e-12), 0, 1)
    segments = slic(scaled if array.shape[0] > 1 else scaled[0], n_segments=n_segments,
                    compactness=compactness, start_label=0,
                    channel_axis=0 if array.shape[0] > 1 else None)
    n = int(segments.max()) + 1
    rng = np.random.default_rng(seed)
    presence = (rng.random((n_samples, n)) < keep_prob).astype(np.float64)
    presence[0] = 1.0
    spatial = tuple(range(2, image.ndim))
    fill_value = image.mean(dim=spatial, keepdim=True) if fill is None \
        else torch.full_like(image.mean(dim=spatial, keepdim=True), fill)
    seg = torch.from_numpy(segments).to(image.device)
    scores = []
    with eval_mode(model), torch.no_grad():
        logits = model(image)
        mask = _region_mask(logits, target_class, None if region is None else
                            torch.as_tensor(region).reshape(1, *image.shape[2:]))
        for start in range(0, n_samples, batch_size):
            keep = torch.from_numpy(presence[start : start + batch_size]).to(image)
            kept = keep[:, seg][:, None]  # (b, 1, *S)
            batch = image * kept + fill_value * (1 - kept)
            probs = torch.softmax(model(batch), dim=1)
            scores.append(region_score(probs, target_class, mask).cpu().numpy())
    y = np.concatenate(scores)
    cosine = 1 - presence.sum(1) / (np.sqrt(n) * np.sqrt(presence.sum(1)).clip(1e-12))
    sample_weight = np.exp(-(cosine**2) / kernel_width**2)
    surrogate = Ridge(alpha=alpha).fit(presence, y, sample_weight=sample_weight)
    return LimeResult(segments=segments, weights=surrogate.coef_,
                      map=surrogate.coef_[segments].astype(np.float32),
                      intercept=float(surrogate.intercept_),
                      r2=float(surrogate.score(presence, y, sample_weight=sample_weight)),
                      base_score=float(y[0]))


# ----------------------------------------------------------------------------------- plots
def show_heatmap(ax, image: np.ndarray, heat: np.ndarray, label: np.ndarray | None = None,
                 title: str | None = None, alpha: float = 0.5, cmap: str = "inferno",
                 vmin: float | None = None, vmax: float | None = None, contour: bool = True):
    """Draw a grey ``(H, W)`` image, a heat map over it and the label's outline.

    Args:
        image: ``(H, W)`` intensities (shown by `viz.show_slice`).
        heat: ``(H, W)`` map; transparent below 5 % of its range so the anatomy shows.
        label: ``(H, W)`` integer labels drawn as outlines in `viz.LABEL_COLORS`, or None.
        vmin, vmax: colour range of ``heat``; default its min and max. Use a diverging
            ``cmap`` (``"RdBu_r"``) with ``vmin=-vmax`` for signed maps.

    Returns:
        the heat map's ``AxesImage`` (for ``fig.colorbar``).
    """
    from medseg_helpers import viz

    viz.show_slice(ax, image, title=title)
    heat = np.asarray(heat, dtype=np.float64)
    vmin = float(heat.min()) if vmin is None else vmin
    vmax = float(heat.max()) if vmax is None else vmax
    faint = np.abs(heat) < 0.05 * max(abs(vmin), abs(vmax), 1e-12)
    shown = ax.imshow(np.ma.masked_where(faint, heat), cmap=cmap, vmin=vmin, vmax=vmax,
                      alpha=alpha, interpolation="nearest")
    if label is not None and contour:
        for value in np.unique(label):
            if value > 0:
                ax.contour(label == value, levels=[0.5], linewidths=1.0,
                           colors=[viz.LABEL_COLORS[int(value) % len(viz.LABEL_COLORS)]])
    return shown
