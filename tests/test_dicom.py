"""medseg_helpers.data.dicom: a volume written as a DICOM series reads back unchanged."""

from __future__ import annotations

import locale
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from medseg_helpers.data import io
from medseg_helpers.data.dicom import write_dicom_series
from medseg_helpers.data.volume import Volume


def test_series_reads_back_with_the_same_voxels_and_geometry(tmp_path: Path, ct_volume) -> None:
    folder = write_dicom_series(ct_volume, tmp_path / "ct")  # oblique: rotated 30 degrees
    assert len(list(folder.glob("*.dcm"))) == ct_volume.spatial_shape[0]
    back = io.read_volume(folder)
    np.testing.assert_array_equal(back.array, ct_volume.array)
    assert back.same_geometry(ct_volume, atol=1e-4)


def test_writing_keeps_the_process_locale(tmp_path: Path, ct_volume) -> None:
    # GDCM sets LC_ALL=C while writing; left so, later open() calls would default to ASCII.
    before = locale.setlocale(locale.LC_ALL), locale.getpreferredencoding(False)
    write_dicom_series(ct_volume, tmp_path / "ct")
    assert (locale.setlocale(locale.LC_ALL), locale.getpreferredencoding(False)) == before


def test_float_values_are_rounded_to_int16(tmp_path: Path) -> None:
    volume = Volume(np.array([[[-0.6, 0.4, 1.5]]], dtype=np.float32).repeat(2, axis=0))
    back = io.read_volume(write_dicom_series(volume, tmp_path / "s"))
    np.testing.assert_array_equal(back.array[0, 0], [-1, 0, 2])  # rint: half to even


def test_writing_again_replaces_the_series(tmp_path: Path, ct_volume) -> None:
    write_dicom_series(ct_volume, tmp_path / "s")
    shorter = Volume(ct_volume.array[:4], ct_volume.spacing_mm, ct_volume.origin_mm,
                     ct_volume.direction)
    write_dicom_series(shorter, tmp_path / "s")
    assert io.read_volume(tmp_path / "s").spatial_shape == (4, 20, 30)


@pytest.mark.parametrize(("array", "match"), [
    (np.zeros((2, 3, 4, 5), np.float32), r"one \(Z, Y, X\) volume"),
    (np.full((2, 3, 4), 40000.0, np.float32), "do not fit int16"),
])
def test_unwritable_volumes_raise(tmp_path: Path, array: np.ndarray, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        write_dicom_series(Volume(array), tmp_path / "s")
    assert not list(tmp_path.glob("s/*.dcm"))


def test_an_evenly_spaced_series_reads_without_a_gap_warning(tmp_path: Path, ct_volume,
                                                             caplog) -> None:
    # positions are written with 10 significant digits: gaps differ by ~1e-7 mm, which ITK
    # alone would flag as "non-uniform sampling"
    odd = Volume(ct_volume.array, (13.125, 4.375, 4.375), (-139.7, -141.3, -207.123456789))
    with caplog.at_level("WARNING", logger="medseg_helpers.data.dicom"):
        io.read_volume(write_dicom_series(odd, tmp_path / "s"))
    assert "uneven" not in caplog.text


def test_series_description_is_written_when_given(tmp_path: Path, ct_volume) -> None:
    folder = write_dicom_series(ct_volume, tmp_path / "s", series_description="AX 3mm")
    reader = sitk.ImageFileReader()
    reader.SetFileName(str(sorted(folder.glob("*.dcm"))[0]))
    reader.ReadImageInformation()
    assert reader.GetMetaData("0008|103e").strip() == "AX 3mm"
