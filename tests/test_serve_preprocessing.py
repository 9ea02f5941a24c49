"""The service prepares uploads exactly as training prepared its cases.

Specification: for a model exported with its slice cache's preprocessing, the mask the
service returns for an uploaded scan equals, voxel for voxel, the argmax of
`inferers.predict_logits` on that scan as the training path preprocessed it
(`build_slice_cache`), mapped back with `SliceCache.merge_case`.
"""

from __future__ import annotations

import gzip

import numpy as np
import pytest
import torch
from torch import nn

pytest.importorskip("onnxruntime")
pytest.importorskip("fastapi")
pytest.importorskip("httpx")
nib = pytest.importorskip("nibabel")

from medseg_helpers.data.decathlon import Case  # noqa: E402
from medseg_helpers.data.io import write_volume  # noqa: E402
from medseg_helpers.data.slice_cache import build_slice_cache  # noqa: E402
from medseg_helpers.data.volume import Volume  # noqa: E402
from medseg_helpers.deploy.export import export_onnx  # noqa: E402
from medseg_helpers.deploy.preprocessing import Preprocessing, read_preprocessing  # noqa: E402
from medseg_helpers.deploy.runtime import OnnxSegmenter  # noqa: E402
from medseg_helpers.deploy.serve import create_app  # noqa: E402
from medseg_helpers.inferers import predict_logits  # noqa: E402

pytestmark = [pytest.mark.filterwarnings("ignore:.*LeafSpec.*:FutureWarning"),
              pytest.mark.filterwarnings("ignore:Using `httpx` with `starlette.testclient`")]

NUM_CLASSES = 3
# Rotated about z, shifted: the service must keep the geometry through any resampling.
DIRECTION = np.array([[0.0, -1.0, 0.0], [1.0, 0.0, 0.0], [0.0, 0.0, 1.0]])


@pytest.fixture(autouse=True)
def _caches_in_tmp(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))


def _case(folder) -> Case:
    """A CT-like ``(Z, Y, X) = (7, 40, 36)`` scan (HU) with a two-class label, on disk."""
    rng = np.random.default_rng(0)
    zz, yy, xx = np.mgrid[:7, :40, :36]
    body = (yy - 20) ** 2 + (xx - 18) ** 2 < 15**2
    organ = (yy - 18) ** 2 + (xx - 20) ** 2 < 6**2
    image = np.where(body, 40.0, -1000.0) + 80.0 * organ + 15.0 * rng.normal(size=body.shape)
    label = (body & (zz > 0)).astype(np.uint8) + (organ & (zz > 1)).astype(np.uint8)
    geometry = {"spacing_mm": (2.5, 0.9, 0.8), "origin_mm": (10.0, -20.0, 30.0),
                "direction": DIRECTION}
    image_path = write_volume(Volume(image.astype(np.int16), **geometry),
                              folder / "imagesTr" / "case_001.nii.gz")
    label_path = write_volume(Volume(label, **geometry), folder / "labelsTr" / "case_001.nii.gz")
    return Case("case_001", image_path, label_path)


def _model() -> nn.Module:
    """A small 2D conv net without normalisation layers: its argmax follows the input
    intensities, so a different preprocessing gives a different mask."""
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(1, 8, 3, padding=1), nn.ReLU(),
                         nn.Conv2d(8, NUM_CLASSES, 3, padding=1)).eval()


@pytest.mark.parametrize("settings", [
    {"normalisation": "zscore"},  # the course cache
    {"normalisation": "clip_zscore", "spacing_mm": (2.0, 1.2, 1.0)},  # resampled
    {"normalisation": "ct_window", "normalisation_kwargs": {"preset": "soft_tissue"},
     "axis": 2},  # sagittal slices
], ids=["zscore", "clip_zscore-resampled", "ct_window-sagittal"])
def test_service_mask_equals_predict_logits_on_the_training_preprocessing(tmp_path, settings):
    from fastapi.testclient import TestClient

    case = _case(tmp_path / "dataset")
    cache = build_slice_cache([case], tmp_path / "cache", **settings)
    preprocessing = Preprocessing.from_settings(cache.settings)
    path = export_onnx(_model(), torch.randn(1, 1, 16, 16), tmp_path / "model.onnx",
                       preprocessing=preprocessing)
    assert read_preprocessing(path) == preprocessing  # export -> metadata -> the same

    # The training path: cached slices (n, C, H, W) -> volume (C, n, H, W) -> logits.
    entry = cache.cases[case.patient_id]
    cached = torch.from_numpy(np.array(cache.images[entry.start:entry.stop])).transpose(0, 1)
    logits = predict_logits(OnnxSegmenter(path), cached, 2, batch_size=4)
    expected = cache.merge_case(case.patient_id, logits.argmax(0).numpy().astype(np.uint8))
    assert len(np.unique(expected.array)) >= 2  # the comparison sees more than one class

    client = TestClient(create_app(path, num_classes=NUM_CLASSES, num_threads=1))
    reply = client.post("/v1/segment", files={"file": ("scan.nii.gz",
                                                       case.image_path.read_bytes())})
    assert reply.status_code == 200, reply.text
    mask = nib.Nifti1Image.from_bytes(gzip.decompress(reply.content))
    served = np.asarray(mask.dataobj).transpose(2, 1, 0)  # (X, Y, Z) -> (Z, Y, X)
    assert served.shape == expected.array.shape
    np.testing.assert_array_equal(served, expected.array)
