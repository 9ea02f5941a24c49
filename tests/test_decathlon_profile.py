"""The decathlon profile's code path, run in CI on a tiny fake Task04_Hippocampus.

``medseg course run --profile decathlon`` trains on the downloaded Decathlon task
Task04_Hippocampus: 1 MR channel, labels 0 background / 1 Anterior / 2 Posterior,
small volumes of varying size (about 35 x 50 x 35 voxels of 1 mm), and a tarball that
carries macOS ``._`` metadata files. These tests serve an archive with that layout from
a local HTTP server (127.0.0.1, nothing leaves the machine), point the manifest's
checksum at it, and run what the notebooks run: `course_data.ensure_course_dataset`
for the decathlon profile, then `train_job.train_from_config` and
`course_model.ensure_trained_model` on ``dataset="Task04_Hippocampus"`` for one epoch.
"""

from __future__ import annotations

import functools
import hashlib
import io
import json
import math
import tarfile
import threading
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from data_download import manifest as manifest_module
from medseg_helpers.course.profiles import profile_defaults

TASK = "Task04_Hippocampus"
LABELS = {"0": "background", "1": "Anterior", "2": "Posterior"}
SHAPES_XYZ = [(35, 51, 35), (34, 52, 36), (36, 49, 34), (35, 50, 37), (33, 51, 35),
              (36, 50, 35), (35, 53, 36), (34, 48, 35)]  # the real cases vary like this


def _nifti_bytes(array: np.ndarray) -> bytes:
    image = nib.Nifti1Image(array, np.diag([1.0, 1.0, 1.0, 1.0]))
    return image.to_bytes()  # uncompressed .nii bytes; gzip below for .nii.gz


def _case(shape: tuple[int, int, int], rng: np.random.Generator) -> tuple[bytes, bytes]:
    """A hippocampus-like pair: an elongated structure split into head and tail."""
    import gzip

    x, y, z = np.meshgrid(*(np.arange(n) for n in shape), indexing="ij")
    cx, cy, cz = (n / 2 + rng.uniform(-2, 2) for n in shape)
    inside = ((x - cx) / 6) ** 2 + ((y - cy) / 16) ** 2 + ((z - cz) / 6) ** 2 <= 1
    label = np.where(inside, np.where(y < cy, 1, 2), 0).astype(np.uint8)
    image = 200 + 150 * inside + rng.normal(0, 20, shape)
    return (gzip.compress(_nifti_bytes(image.astype(np.float32)), mtime=0),
            gzip.compress(_nifti_bytes(label), mtime=0))


def _fake_archive() -> bytes:
    """``Task04_Hippocampus.tar`` as MSD ships it: top folder, dataset.json, ``._`` files."""
    rng = np.random.default_rng(0)
    members: dict[str, bytes] = {}
    training = []
    for number, shape in enumerate(SHAPES_XYZ, start=1):
        name = f"hippocampus_{number:03d}.nii.gz"
        members[f"{TASK}/imagesTr/{name}"], members[f"{TASK}/labelsTr/{name}"] = _case(shape, rng)
        members[f"{TASK}/imagesTr/._{name}"] = b"\x00\x05\x16\x07 AppleDouble"
        training.append({"image": f"./imagesTr/{name}", "label": f"./labelsTr/{name}"})
    training.append({"image": "./imagesTr/._hippocampus_001.nii.gz",
                     "label": "./labelsTr/._hippocampus_001.nii.gz"})  # listed in the real one
    members[f"{TASK}/imagesTs/hippocampus_900.nii.gz"] = _case((35, 50, 35), rng)[0]
    members[f"{TASK}/dataset.json"] = json.dumps({
        "name": "Hippocampus", "tensorImageSize": "3D", "modality": {"0": "MRI"},
        "labels": LABELS, "numTraining": len(SHAPES_XYZ), "numTest": 1,
        "training": training, "test": ["./imagesTs/hippocampus_900.nii.gz"],
    }).encode()  # fmt: skip
    members[f"._{TASK}"] = b"\x00\x05\x16\x07 AppleDouble"
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as tar:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return buffer.getvalue()


@pytest.fixture(scope="module")
def archive_dir(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("mirror")
    (folder / f"{TASK}.tar").write_bytes(_fake_archive())
    return folder


@pytest.fixture
def mirror(archive_dir, tmp_path, monkeypatch) -> list[str]:
    """Serve the fake archive, trust its MD5, isolate data and run dirs; yields request paths."""
    requests: list[str] = []

    class Handler(SimpleHTTPRequestHandler):
        def log_message(self, format, *args):
            requests.append(self.path)

    handler = functools.partial(Handler, directory=str(archive_dir))
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05})
    thread.daemon = True
    thread.start()

    data = (archive_dir / f"{TASK}.tar").read_bytes()
    raw = json.loads(manifest_module.DEFAULT_MANIFEST_PATH.read_text(encoding="utf-8"))
    raw["tasks"][TASK].update(md5=hashlib.md5(data).hexdigest(), sha256=None,
                              size_bytes=len(data))
    fake_manifest = tmp_path / "manifest.json"
    fake_manifest.write_text(json.dumps(raw))
    monkeypatch.setattr(manifest_module, "DEFAULT_MANIFEST_PATH", fake_manifest)
    monkeypatch.setenv("MEDSEG_DOWNLOAD_BASE_URL", f"http://127.0.0.1:{httpd.server_address[1]}")
    monkeypatch.setenv("no_proxy", "127.0.0.1,localhost")
    monkeypatch.setenv("NO_PROXY", "127.0.0.1,localhost")
    monkeypatch.setenv("MEDSEG_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.setenv("MEDSEG_RUN_DIR", str(tmp_path / "runs"))
    yield requests
    httpd.shutdown()
    httpd.server_close()
    thread.join(timeout=5)


def test_decathlon_profile_trains_on_hippocampus():
    assert profile_defaults("decathlon").dataset == TASK
    assert profile_defaults("decathlon").download is True


def test_decathlon_profile_downloads_the_task_once(mirror, tmp_path):
    from medseg_helpers.course.data import ensure_course_dataset
    from medseg_helpers.data.decathlon import read_decathlon

    folder = ensure_course_dataset("decathlon")
    assert folder == tmp_path / "data" / TASK
    assert json.loads((folder / "dataset.json").read_text())["labels"] == LABELS
    cases = read_decathlon(folder)
    assert len(cases) == len(SHAPES_XYZ)  # the listed ._ entry is skipped
    assert ensure_course_dataset("decathlon") == folder  # second call: marker, no network
    assert mirror == [f"/{TASK}.tar"]


@pytest.fixture
def one_thread():
    """Tiny tensors: one thread is fastest, and far faster on a busy CI machine."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def test_train_from_config_on_the_downloaded_task(mirror, tmp_path, one_thread):
    from medseg_helpers.course.model import course_model_config, ensure_trained_model
    from medseg_helpers.training.job import train_from_config

    config = course_model_config("smoke", dataset=TASK, max_epochs=1, progress=False,
                                 tensorboard=False, val_fraction=0.25, test_fraction=0.25)
    result = train_from_config(config)
    assert len(mirror) == 1  # downloaded once, by the first use
    assert result["dataset_dir"] == str(tmp_path / "data" / TASK)
    assert result["num_classes"] == 3
    assert result["class_names"] == ["Anterior", "Posterior"]
    assert math.isfinite(result["best_val_dice"])

    trained = ensure_trained_model(config)  # what notebooks 06-10 call: reuses the run
    assert trained.class_names == ["background", "Anterior", "Posterior"]
    patient = trained.split.test[0]
    pred, truth = trained.predict(patient), trained.read_label(patient)
    assert pred.array.shape == truth.array.shape  # back on the source grid (z, y, x)
    assert set(np.unique(pred.array)) <= {0, 1, 2}
    assert np.allclose(pred.spacing_mm, truth.spacing_mm)


def test_course_run_decathlon_fetches_the_task_before_any_notebook(mirror, tmp_path, monkeypatch):
    from medseg_helpers.course import runner

    folder = tmp_path / "notebooks"
    folder.mkdir()
    (folder / "00_setup.ipynb").write_text("{}")
    seen = []

    def fake_run(source, out, profile, timeout_s, env):
        seen.append((profile, (Path(env["MEDSEG_DATA_DIR"]) / TASK / "dataset.json").is_file()))
        return runner.NotebookResult(source.stem, "passed", 0.1, {"num_training_cases": 8})

    monkeypatch.setattr(runner, "_run_notebook", fake_run)
    monkeypatch.setattr(runner, "write_course_report", lambda *args: None)
    runner.run_course("decathlon", tmp_path / "run", notebook_dir=folder)
    assert seen == [("decathlon", True)]
    assert mirror == [f"/{TASK}.tar"]


def test_course_run_decathlon_offline_stops_with_the_downloaders_message(tmp_path, monkeypatch):
    from data_download import DownloadError
    from medseg_helpers.course import runner

    monkeypatch.setenv("MEDSEG_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.setenv("MEDSEG_DOWNLOAD_BASE_URL", "http://127.0.0.1:9")  # nothing listens
    monkeypatch.setattr("data_download.downloader._sleep", lambda s: None)
    monkeypatch.setattr(runner, "_run_notebook", lambda *a: pytest.fail("must not run"))
    with pytest.raises(DownloadError, match=TASK):
        runner.run_course("decathlon", tmp_path / "run")


def test_3d_training_with_the_decathlon_patch_on_volumes_smaller_than_it(mirror, one_thread):
    """The decathlon profile's 3D patch (40, 56, 40) exceeds every Hippocampus volume."""
    from medseg_helpers.course.model import course_model_config
    from medseg_helpers.training.job import train_from_config

    patch = profile_defaults("decathlon").patch_size_3d
    config = course_model_config("smoke", dataset=TASK, spatial_dims=3, patch_size=patch,
                                 max_epochs=1, batch_size=2, progress=False, tensorboard=False,
                                 val_fraction=0.25, test_fraction=0.25)
    result = train_from_config(config)
    assert result["num_classes"] == 3 and math.isfinite(result["best_val_dice"])
