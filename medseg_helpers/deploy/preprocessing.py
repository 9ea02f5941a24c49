"""The preprocessing an exported model expects, carried in the exported file itself.

A network only gives the right answer on inputs prepared as in training. `Preprocessing`
holds what the slice cache did to every training case (`data.slice_cache.SliceCache`'s
``settings``): optional resampling to ``spacing_mm``, the per-channel intensity
normalisation (a key of `data.case_cache.NORMALISATIONS` and its keyword arguments) and
the axis a 2D model's slices were cut along. The exporters (`deploy.export`) store it as
JSON under `METADATA_KEY`: an ONNX ``metadata_props`` entry, or an extra file inside a
``.pt2`` (``torch.export``) or ``.pt`` (TorchScript) archive; `read_preprocessing` reads
it back and the service (`deploy.serve`) applies it with `Preprocessing.apply`, the same
steps and functions as `data.case_cache.prepare_case`, so served and training inputs agree.

The model's post-processing rule (`transforms.postprocess.SmallComponentFilter`, chosen on
validation patients with the course model) travels the same way in ONNX files, under
`POSTPROCESSING_KEY`; `postprocessing_from_metadata` reads it (none stored: no rule).
"""

from __future__ import annotations

import json
import os
import zipfile
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import SimpleITK as sitk

from medseg_helpers.data.case_cache import prepare_image, preprocessing_settings
from medseg_helpers.data.volume import Volume
from medseg_helpers.transforms.postprocess import SmallComponentFilter

PathLike = str | os.PathLike
#: ONNX ``metadata_props`` key, and the name of the extra file in ``.pt2``/``.pt`` archives.
METADATA_KEY = "medseg.preprocessing"
#: ONNX ``metadata_props`` key of the model's post-processing rule (JSON).
POSTPROCESSING_KEY = "medseg.postprocessing"


class MissingPreprocessingError(ValueError):
    """An exported model carries no `Preprocessing` (exported without ``preprocessing=``)."""


@dataclass(frozen=True)
class Preprocessing:
    """How the training inputs of a model were prepared (see the module docstring).

    Attributes:
        normalisation: a key of `data.case_cache.NORMALISATIONS` (e.g. ``"zscore"``).
        normalisation_kwargs: its keyword arguments (JSON values), e.g.
            ``{"preset": "soft_tissue"}`` for ``"ct_window"``.
        spacing_mm: ``(sz, sy, sx)`` mm the cases were resampled to; None: each case
            kept its own grid.
        axis: spatial axis (0 = Z, 1 = Y, 2 = X) a 2D model's slices were cut along;
            None for a 3D model's (patch) cache, which has no slicing axis.
    """

    normalisation: str
    normalisation_kwargs: dict[str, Any]
    spacing_mm: tuple[float, float, float] | None
    axis: int | None

    def __post_init__(self) -> None:
        settings = preprocessing_settings(self.normalisation, self.normalisation_kwargs,
                                          self.spacing_mm)  # checks the normalisation name
        object.__setattr__(self, "normalisation_kwargs", settings["normalisation_kwargs"])
        spacing = settings["spacing_mm"]
        object.__setattr__(self, "spacing_mm", None if spacing is None else tuple(spacing))
        if self.axis is not None and self.axis not in (0, 1, 2):
            raise ValueError(f"axis must be 0, 1, 2 or None; got {self.axis}")

    @classmethod
    def from_settings(cls, settings: Mapping[str, Any]) -> Preprocessing:
        """From a cache's ``settings`` (``SliceCache.settings``, a patch cache's index);
        keys beyond the preprocessing (``slice_shape``, ``patch_size``...) are ignored."""
        return cls(settings["normalisation"], dict(settings["normalisation_kwargs"]),
                   settings["spacing_mm"], settings.get("axis"))

    def to_json(self) -> str:
        """Compact JSON of the fields (what the exporters store)."""
        return json.dumps(asdict(self), sort_keys=True, separators=(",", ":"))

    @classmethod
    def from_json(cls, text: str | bytes) -> Preprocessing:
        """Inverse of `to_json`; ``ValueError`` for malformed JSON or unknown fields."""
        try:
            fields = json.loads(text)
            return cls(**fields)
        except (json.JSONDecodeError, TypeError) as err:
            raise ValueError(f"malformed {METADATA_KEY} metadata: {err}") from err

    def apply(self, image: Volume) -> Volume:
        """Prepare a raw scan as `data.case_cache.prepare_case` prepared training cases.

        Args:
            image: ``(Z, Y, X)`` or ``(C, Z, Y, X)`` scan with its geometry (intensities as
                stored, e.g. HU).

        Returns:
            ``(C, Z', Y', X')`` float32 on the preprocessed grid: resampled (linear) to
            ``spacing_mm`` if set, then each channel normalised.
        """
        return prepare_image(image, self.spacing_mm, self.normalisation,
                             self.normalisation_kwargs)

    def prepared_shape(self, spatial_shape: tuple[int, int, int],
                       spacing_mm: tuple[float, float, float]) -> tuple[int, int, int]:
        """The spatial shape `apply` returns for a scan, computed without the voxels.

        Args:
            spatial_shape: the scan's ``(Z, Y, X)``.
            spacing_mm: its voxel size ``(sz, sy, sx)`` in mm.

        Returns:
            ``(Z', Y', X')``: unchanged without resampling, else
            `preprocess.resampled_shape` to ``spacing_mm``.
        """
        from medseg_helpers.transforms.preprocess import resampled_shape

        if self.spacing_mm is None:
            return tuple(int(n) for n in spatial_shape)
        return resampled_shape(spatial_shape, spacing_mm, self.spacing_mm)

    def to_source_grid(self, labels: Volume, source: Volume) -> Volume:
        """Labels on the preprocessed grid, back on ``source``'s grid.

        Args:
            labels: ``(Z', Y', X')`` integer labels with the geometry `apply` returned.
            source: the scan given to `apply` (only its geometry is used).

        Returns:
            ``labels`` itself without resampling; else a ``(Z, Y, X)`` `Volume` on the
            source grid, nearest-neighbour (outside the preprocessed grid: 0), as
            ``SliceCache.merge_case`` maps predictions back.
        """
        if self.spacing_mm is None:
            return labels
        reference = Volume(np.zeros(source.spatial_shape, np.uint8), source.spacing_mm,
                           source.origin_mm, source.direction).to_sitk()
        resampled = sitk.Resample(labels.to_sitk(), reference, sitk.Transform(),
                                  sitk.sitkNearestNeighbor, 0.0)
        return Volume.from_sitk(resampled)


def preprocessing_from_metadata(metadata: Mapping[str, str], source: PathLike
                                ) -> Preprocessing:
    """The `Preprocessing` in an exported model's metadata map (ONNX ``metadata_props``).

    Raises:
        MissingPreprocessingError: no `METADATA_KEY` entry (one line naming ``source``).
        ValueError: a malformed entry.
    """
    if METADATA_KEY not in metadata:
        raise MissingPreprocessingError(
            f"{Path(source).name} carries no {METADATA_KEY!r} metadata, so its input "
            "preprocessing is unknown: re-export it with preprocessing="
            "Preprocessing.from_settings(cache.settings) (or `medseg export`)")
    return Preprocessing.from_json(metadata[METADATA_KEY])


def postprocessing_from_metadata(metadata: Mapping[str, str]) -> SmallComponentFilter:
    """The post-processing rule in an exported model's metadata map; an empty rule (no
    change) when the file carries none.

    Raises:
        ValueError: a malformed entry.
    """
    if POSTPROCESSING_KEY not in metadata:
        return SmallComponentFilter()
    return SmallComponentFilter.from_json(metadata[POSTPROCESSING_KEY])


def read_preprocessing(path: PathLike) -> Preprocessing:
    """The `Preprocessing` stored in an exported ``.onnx``, ``.pt2`` or ``.pt``/``.ts`` file.

    Reads the metadata only: the ONNX graph is parsed but no session is created, and the
    PyTorch archives' extra file is read from the zip, without unpickling the model.

    Raises:
        MissingPreprocessingError: the file was exported without ``preprocessing=``.
        ValueError: an unknown suffix or malformed metadata.
    """
    path = Path(path)
    if path.suffix == ".onnx":
        import onnx

        proto = onnx.load(str(path), load_external_data=False)
        metadata = {entry.key: entry.value for entry in proto.metadata_props}
    elif path.suffix in (".pt2", ".pt", ".ts"):
        with zipfile.ZipFile(path) as archive:  # extra files: <archive>/extra/<name>
            names = [n for n in archive.namelist() if n.split("/")[1:] == ["extra", METADATA_KEY]]
            metadata = {METADATA_KEY: archive.read(names[0]).decode()} if names else {}
    else:
        raise ValueError(f"cannot tell the format of {path}; expected .onnx, .pt2, .pt or .ts")
    return preprocessing_from_metadata(metadata, path)
