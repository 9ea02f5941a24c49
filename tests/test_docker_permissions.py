"""The Dockerfile's route, without Docker: a model exported on the host under the usual
umask is readable by the image's user (uid 10001), which is "other" to the host's files.

Reproduced by reading the exported file in a child process that drops to uid/gid 10001, as
the container does when ``runs/export`` is mounted read-only. Needs root to switch users.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from pathlib import Path

import pytest
import torch

from medseg_helpers.deploy.export import export_onnx
from medseg_helpers.deploy.preprocessing import Preprocessing
from medseg_helpers.fileutil import atomic_path
from medseg_helpers.networks.unet import UNet

pytestmark = [pytest.mark.skipif(not hasattr(os, "geteuid") or os.geteuid() != 0,
                                 reason="switching to the image's uid needs root"),
              pytest.mark.filterwarnings("ignore:.*LeafSpec.*:FutureWarning")]

IMAGE_UID = 10001  # `useradd --uid 10001 medseg` in the Dockerfile


def _export_under_umask(root: Path, umask: int) -> Path:
    """``medseg export``'s ONNX writer, run with ``umask`` as the host user would."""
    previous = os.umask(umask)
    try:
        model = UNet(2, 1, 2, base_channels=4, depth=2).eval()
        return export_onnx(model, torch.randn(1, 1, 16, 16), root / "runs/export/model.onnx",
                           preprocessing=Preprocessing("zscore", {}, None, axis=0))
    finally:
        os.umask(previous)


def _read_as_image_user(path: Path) -> subprocess.CompletedProcess:
    def drop_privileges() -> None:
        os.setgid(IMAGE_UID)
        os.setuid(IMAGE_UID)

    # cat, not this interpreter: the image user may not execute the host's venv.
    return subprocess.run(["cat", str(path)], preexec_fn=drop_privileges,
                          stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                          timeout=60)


@pytest.fixture
def host_checkout():
    """A project folder others may traverse (a home directory's usual 0o755)."""
    root = Path(tempfile.mkdtemp(prefix="medseg-host-"))
    root.chmod(0o755)
    yield root
    shutil.rmtree(root)


def test_a_model_exported_under_umask_022_is_readable_by_the_image_user(host_checkout):
    path = _export_under_umask(host_checkout, 0o022)
    assert path.stat().st_mode & 0o777 == 0o644
    assert path.parent.stat().st_mode & 0o777 == 0o755
    result = _read_as_image_user(path)
    assert result.returncode == 0, result.stderr


def test_a_private_umask_makes_files_unreadable_to_the_image_user(host_checkout):
    # The check above can fail: with umask 077 the container gets "Permission denied".
    # (The exporters write through `atomic_path`; writing through it directly is faster.)
    previous = os.umask(0o077)
    try:
        with atomic_path(host_checkout / "runs/export/model.onnx") as tmp:
            tmp.write_bytes(b"onnx bytes")
    finally:
        os.umask(previous)
    path = host_checkout / "runs/export/model.onnx"
    assert path.stat().st_mode & 0o777 == 0o600
    result = _read_as_image_user(path)
    assert result.returncode != 0 and "Permission denied" in result.stderr
