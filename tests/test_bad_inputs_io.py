"""Specification of how `medseg_helpers.data.io` refuses bad input: one line naming the file
and the problem, decided from the header before anything large is allocated, and before a
FIFO or device is opened. Nothing is written when a write is refused."""

from __future__ import annotations

import contextlib
import gzip
import logging
import os
import re
import signal
import tracemalloc
from collections.abc import Iterator
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from medseg_helpers.data import io, itk_messages, nifti_header
from medseg_helpers.data.io import VolumeReadError
from medseg_helpers.data.volume import Volume

SMALL = Volume(np.arange(60, dtype=np.int16).reshape(3, 4, 5), (2.0, 1.0, 0.5), (1.0, 2.0, 3.0))


def write_nifti(path: Path, shape: tuple[int, ...], datatype: str = "int16",
                payload: bytes = b"", **fields) -> Path:
    """A single-file NIfTI-1: a header declaring ``shape`` (X, Y, Z) voxels of ``datatype``
    (a nibabel label) with identity sform and qform unless ``fields`` override them, then
    ``payload`` as the voxel bytes; gzipped when ``path`` ends in ``.gz``."""
    header = nib.Nifti1Header()
    header.set_data_shape(shape)
    header.set_data_dtype(datatype)
    header.set_sform(np.eye(4), code=1)
    header.set_qform(np.eye(4), code=1)
    header["magic"], header["vox_offset"] = b"n+1", 352
    for name, value in fields.items():
        header[name] = value
    data = header.binaryblock + b"\0" * 4 + payload  # 348-byte header, 4 extension bytes
    path.write_bytes(gzip.compress(data) if path.suffix == ".gz" else data)
    return path


@contextlib.contextmanager
def fails_within(seconds: float) -> Iterator[None]:
    """Turn a hang (a regression that opens a FIFO) into a TimeoutError after ``seconds``."""
    def expire(signum, frame):
        raise TimeoutError(f"still running after {seconds} s")

    previous = signal.signal(signal.SIGALRM, expire)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


# --- a NIfTI header declaring more than the file holds -----------------------------------


@pytest.mark.parametrize(("name", "holds"), [
    ("big.nii", "the file holds only 360 bytes"),
    ("big.nii.gz", "the file decompresses to only 360 bytes"),
])
@pytest.mark.parametrize(("side", "voxel_bytes"), [(1000, 2_000_000_000), (2000, 16_000_000_000)])
def test_declared_voxels_beyond_the_file_are_refused_before_allocating(
        tmp_path, name, holds, side, voxel_bytes):
    path = write_nifti(tmp_path / name, (side, side, side), payload=b"\0" * 8)
    tracemalloc.start()
    try:
        with pytest.raises(VolumeReadError, match=(
            rf"^cannot read .*{re.escape(name)}: truncated or corrupt header: it declares "
            rf"\({side}, {side}, {side}\) int16 = {voxel_bytes} bytes of voxels from byte "
            rf"352, but {holds}$"
        )):
            io.read_volume(path)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 8 * 2**20  # the 1 MiB decompression buffer, not gigabytes


@pytest.mark.parametrize(("name", "holds"), [("ct.nii", "holds"),
                                              ("ct.nii.gz", "decompresses to")])
def test_the_size_check_is_exact_to_the_byte(tmp_path, monkeypatch, name, holds):
    monkeypatch.setattr(nifti_header, "_GZIP_UNCHECKED_BYTES", 0)  # check small .nii.gz files too
    voxels = np.arange(60, dtype="<i2").tobytes()  # (5, 4, 3) int16: 120 bytes
    path = write_nifti(tmp_path / name, (5, 4, 3), payload=voxels)
    np.testing.assert_array_equal(io.read_volume(path).array,
                                  np.arange(60, dtype=np.int16).reshape(3, 4, 5))
    write_nifti(path, (5, 4, 3), payload=voxels[:-1])
    with pytest.raises(VolumeReadError, match=rf"= 120 bytes of voxels from byte 352, but the "
                                              rf"file {holds} only 471 bytes$"):
        io.read_volume(path)


# --- voxel types and geometry ------------------------------------------------------------


@pytest.mark.parametrize("datatype", ["complex64", "complex128", "RGB", "RGBA"])
def test_non_scalar_nifti_voxels_are_refused_by_type(tmp_path, datatype):
    itemsize = nib.nifti1.data_type_codes.dtype[datatype].itemsize
    path = write_nifti(tmp_path / "x.nii.gz", (5, 4, 3), datatype, bytes(60 * itemsize))
    with pytest.raises(VolumeReadError, match=(
        rf"^cannot read .*x\.nii\.gz: voxel type {datatype} is not supported: a scalar image "
        r"is needed \(one real number per voxel\)$"
    )):
        io.read_volume(path)


@pytest.mark.parametrize(("fields", "shown"), [
    ({"srow_x": [1.0, 0.0, 0.0, np.nan]}, "srow_x = [1.0, 0.0, 0.0, nan]"),  # origin
    ({"srow_y": [0.0, np.inf, 0.0, 0.0]}, "srow_y = [0.0, inf, 0.0, 0.0]"),  # direction
    ({"sform_code": 0, "qoffset_z": np.nan}, "qoffset_z = nan"),
    ({"sform_code": 0, "quatern_b": np.inf}, "quatern_b = inf"),
    ({"pixdim": [1, 1, np.nan, 1, 1, 1, 1, 1]}, "pixdim = [1.0, nan, 1.0]"),
])
def test_nan_or_inf_in_the_nifti_geometry_is_refused(tmp_path, fields, shown):
    path = write_nifti(tmp_path / "ct.nii", (5, 4, 3), payload=bytes(120), **fields)
    with pytest.raises(VolumeReadError, match=(
        rf"^cannot read .*ct\.nii: NaN or Inf in the NIfTI geometry \({re.escape(shown)}\): "
        r"the voxels' positions are unknown; fix the header$"
    )):
        io.read_volume(path)


def test_nan_in_an_sform_marked_unused_is_ignored_as_itk_ignores_it(tmp_path):
    path = write_nifti(tmp_path / "ct.nii", (5, 4, 3), payload=bytes(120), sform_code=0,
                       srow_x=[np.nan, 0.0, 0.0, 0.0])
    assert np.isfinite(io.read_volume(path).direction).all()


# --- NRRD and MetaImage: one short reason --------------------------------------------------


@pytest.mark.parametrize(("name", "problem"), [
    ("scan.nrrd", "not a readable NRRD file: it does not start with the magic NRRD000x"),
    ("scan.nhdr", "not a readable NRRD file: it does not start with the magic NRRD000x"),
    ("scan.mha", "not a readable MetaImage file: it does not start with a 'Key = value' "
                 "header line"),
    ("scan.mhd", "not a readable MetaImage file: it does not start with a 'Key = value' "
                 "header line"),
])
def test_random_bytes_are_refused_naming_the_format(tmp_path, name, problem):
    path = tmp_path / name
    path.write_bytes(np.random.default_rng(0).bytes(300))
    with pytest.raises(VolumeReadError, match=rf"^cannot read .*{re.escape(name)}: "
                                              rf"{re.escape(problem)}$"):
        io.read_volume(path)


@pytest.fixture
def stderr_is_ours(monkeypatch) -> None:
    """As in a command-line process: this test's threads are the only ones (training tests
    leave idle threads behind, which would make `read_volume` leave file descriptor 2 alone)."""
    monkeypatch.setattr(itk_messages, "stderr_is_ours", lambda: True)


@pytest.mark.usefixtures("stderr_is_ours")
@pytest.mark.parametrize(("name", "content", "reason"), [
    ("bad.nrrd", b"NRRD0004\nthis line has no colon\n\n",
     "not a readable NRRD file: didn't see \": \" or \":=\" in line"),
    ("bad.mha", b"NDims = 3\nElementType = MET_UCHAR\nElementDataFile = LOCAL\n",
     "not a readable MetaImage file: DimSize required and not defined."),
])
def test_a_header_itk_rejects_gives_the_readers_reason_in_one_line(tmp_path, capfd, name,
                                                                   content, reason):
    (tmp_path / name).write_bytes(content)
    with pytest.raises(VolumeReadError, match=rf"^cannot read .*{re.escape(name)}: "
                                              rf"{re.escape(reason)}$"):
        io.read_volume(tmp_path / name)
    assert capfd.readouterr().err == ""  # what MetaIO prints is in the message instead


@pytest.mark.usefixtures("stderr_is_ours")
def test_a_truncated_metaimage_says_how_much_data_is_missing(tmp_path, capfd):
    path = io.write_volume(SMALL, tmp_path / "ct.mha", compress=False)
    path.write_bytes(path.read_bytes()[:-50])
    with pytest.raises(VolumeReadError, match=r"^cannot read .*ct\.mha: not a readable "
                       r"MetaImage file: data not read completely; ideal = 120 : actual = 70$"):
        io.read_volume(path)
    assert capfd.readouterr().err == ""


def test_with_other_threads_running_the_readers_text_stays_on_stderr(tmp_path, capfd,
                                                                     monkeypatch):
    monkeypatch.setattr(itk_messages, "stderr_is_ours", lambda: False)  # e.g. a server's log thread
    path = io.write_volume(SMALL, tmp_path / "ct.mha", compress=False)
    path.write_bytes(path.read_bytes()[:-50])
    with pytest.raises(VolumeReadError, match=r"^cannot read .*ct\.mha: not a readable "
                       r"MetaImage file: no reason given \(the C\+\+ reader may have printed "
                       r"one on stderr\)$"):
        io.read_volume(path)
    assert "data not read completely" in capfd.readouterr().err


_NRRD_MAGIC_ERROR = (
    "Exception thrown in SimpleITK ImageFileReader_Execute: /build/itkNrrdImageIO.cxx:410:\n"
    "itk::ERROR: NrrdImageIO(0x565288118730): ReadImageInformation: Error reading r.nrrd:\n"
    '[nrrd] nrrdLoad: trouble reading "r.nrrd"\n[nrrd] nrrdRead: trouble\n'
    '[nrrd] _nrrdRead: couldn\'t parse "n%Q+)vy?\x01cPoS**};YoZSBB,b" as magic or beginning '
    "of any recognized format"
)
_MHA_ERROR = ("Exception thrown in SimpleITK ImageFileReader_Execute: /build/itkMetaImageIO.cxx"
              ":102:\nITK ERROR: MetaImageIO(0x55e3de5584d0): File cannot be read: r.mha for "
              "reading.\nReason: Success")
_METAIO_PRINTS = ["NDims required and not defined.", "MetaObject: Read: MET_Read Failed",
                  "MetaImage: M_Read: Error parsing file", "MetaImage: Read: Cannot parse file"]


@pytest.mark.parametrize(("message", "printed", "reason"), [
    (_NRRD_MAGIC_ERROR, [],
     'couldn\'t parse "n%Q+)vy??cPoS**};YoZ..." as magic or beginning of any recognized format'),
    (_MHA_ERROR, [], "no reason given (the C++ reader may have printed one on stderr)"),
    (_MHA_ERROR, _METAIO_PRINTS, "NDims required and not defined."),
    (_MHA_ERROR.replace("Success", "No such file or directory"), [],
     "Reason: No such file or directory"),
    ("Exception thrown in SimpleITK\nITK ERROR: disk full", [], "disk full"),
])
def test_itk_reason_keeps_the_cause_and_drops_addresses_and_call_chains(message, printed,
                                                                         reason):
    assert itk_messages.itk_reason(RuntimeError(message), printed) == reason


# --- not a regular file ------------------------------------------------------------------


@pytest.mark.parametrize("name", ["x.nii.gz", "x.nrrd", "x.mha"])
def test_a_fifo_is_refused_without_being_opened(tmp_path, name):
    os.mkfifo(tmp_path / name)
    with fails_within(10), pytest.raises(VolumeReadError, match=(
        rf"^cannot read .*{re.escape(name)}: it is a FIFO \(named pipe\), not a regular file$"
    )):
        io.read_volume(tmp_path / name)


def test_a_detached_header_whose_data_file_is_a_fifo_is_refused(tmp_path):
    os.mkfifo(tmp_path / "ct.raw")
    (tmp_path / "ct.mhd").write_text("NDims = 3\nDimSize = 2 2 2\nElementType = MET_UCHAR\n"
                                     "ElementDataFile = ct.raw\n")
    with fails_within(10), pytest.raises(VolumeReadError, match=(
        r"^cannot read .*ct\.mhd: its data file .*ct\.raw: it is a FIFO \(named pipe\), not a "
        r"regular file$"
    )):
        io.read_volume(tmp_path / "ct.mhd")


def test_a_fifo_in_a_dicom_folder_is_refused(tmp_path, write_dicom_series):
    folder = write_dicom_series(SMALL, tmp_path / "dicom")
    os.mkfifo(folder / "zz.dcm")
    with fails_within(10), pytest.raises(VolumeReadError, match=(
        r"^cannot read .*zz\.dcm: it is a FIFO \(named pipe\), not a regular file$"
    )):
        io.read_volume(folder)


def test_a_folder_named_like_a_volume_file_is_not_read_as_dicom(tmp_path):
    (tmp_path / "ct.nii.gz").mkdir()
    with pytest.raises(VolumeReadError,
                       match=r"^cannot read .*ct\.nii\.gz: it is a folder, not a \.nii\.gz file$"):
        io.read_volume(tmp_path / "ct.nii.gz")


# --- detached headers may point anywhere --------------------------------------------------


@pytest.mark.parametrize(("name", "header"), [
    ("ct.mhd", "NDims = 3\nDimSize = 4 4 4\nElementType = MET_UCHAR\nElementDataFile = {}\n"),
    ("ct.nhdr", "NRRD0004\ntype: uint8\ndimension: 3\nsizes: 4 4 4\nencoding: raw\n"
                "data file: {}\n\n"),
])
def test_a_data_file_outside_the_headers_folder_is_read_with_a_warning(tmp_path, caplog, name,
                                                                         header):
    data = tmp_path / "elsewhere" / "voxels.raw"
    data.parent.mkdir()
    data.write_bytes(bytes(range(64)))
    (tmp_path / "scans").mkdir()
    (tmp_path / "scans" / name).write_text(header.format(data))
    with caplog.at_level(logging.WARNING, logger="medseg_helpers.data.file_checks"):
        volume = io.read_volume(tmp_path / "scans" / name)
    assert volume.array.ravel().tolist() == list(range(64))  # the format allows it
    assert f"reads its voxels from {data}, outside the header's folder" in caplog.text
    assert "read only headers you trust" in caplog.text


@pytest.mark.parametrize("ext", [".mhd", ".nhdr"])
def test_a_data_file_beside_its_header_reads_without_a_warning(tmp_path, caplog, ext):
    io.write_volume(SMALL, tmp_path / f"ct{ext}")
    with caplog.at_level(logging.WARNING, logger="medseg_helpers.data.file_checks"):
        np.testing.assert_array_equal(io.read_volume(tmp_path / f"ct{ext}").array, SMALL.array)
    assert caplog.text == ""


def test_a_missing_data_file_is_named(tmp_path):
    io.write_volume(SMALL, tmp_path / "ct.mhd")
    (tmp_path / "ct.zraw").unlink()
    with pytest.raises(VolumeReadError,
                       match=r"^cannot read .*ct\.mhd: its data file .*ct\.zraw does not exist$"):
        io.read_volume(tmp_path / "ct.mhd")


# --- output names ------------------------------------------------------------------------


@pytest.mark.parametrize(("ext", "data_file"), [
    (".NII.GZ", []), (".NII", []), (".NRRD", []), (".NHDR", ["CT.raw.gz"]), (".Mha", []),
    (".MHD", ["CT.zraw"]),
])
def test_upper_case_extensions_are_written_as_named_and_read_back(tmp_path, ext, data_file):
    path = io.write_volume(SMALL, tmp_path / f"CT{ext}")
    assert path == tmp_path / f"CT{ext}"
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([f"CT{ext}", *data_file])
    back = io.read_volume(path)
    np.testing.assert_array_equal(back.array, SMALL.array)
    assert back.same_geometry(SMALL, atol=1e-6)


@pytest.mark.parametrize("suffix", [".Nii", ".NII.gz"])
def test_a_mixed_case_nifti_extension_is_refused_as_niftilib_refuses_it(tmp_path, suffix):
    problem = (rf"the NIfTI extension '{re.escape(suffix)}' mixes upper and lower case, which "
               r"NIfTI readers \(niftilib, ITK\) refuse; use \.nii(\.gz)? or \.NII(\.GZ)?$")
    with pytest.raises(ValueError, match=rf"^cannot write .*CT{re.escape(suffix)}: {problem}"):
        io.write_volume(SMALL, tmp_path / f"CT{suffix}")
    assert list(tmp_path.iterdir()) == []
    io.write_volume(SMALL, tmp_path / "ct.nii.gz").rename(tmp_path / f"CT{suffix}")
    with pytest.raises(VolumeReadError, match=rf"^cannot read .*CT{re.escape(suffix)}: {problem}"):
        io.read_volume(tmp_path / f"CT{suffix}")


def test_writing_onto_an_existing_folder_is_refused_and_leaves_it_alone(tmp_path):
    (tmp_path / "out.nii.gz").mkdir()
    with pytest.raises(IsADirectoryError, match=r"^cannot write .*out\.nii\.gz: it is an "
                       r"existing folder; give a file name inside it instead$"):
        io.write_volume(SMALL, tmp_path / "out.nii.gz")
    assert [p.name for p in tmp_path.rglob("*")] == ["out.nii.gz"]


def test_convert_refuses_a_folder_destination_before_reading_the_source(tmp_path):
    (tmp_path / "out.nii.gz").mkdir()
    with pytest.raises(IsADirectoryError, match=r"out\.nii\.gz: it is an existing folder"):
        io.convert_to_nifti(tmp_path / "missing.nrrd", tmp_path / "out.nii.gz")


def test_convert_refuses_a_series_uid_for_a_file_source(tmp_path):
    source = io.write_volume(SMALL, tmp_path / "ct.mha")
    with pytest.raises(ValueError, match=r"ct\.mha: a series UID picks a series in a DICOM "
                                         "folder; this is a file"):
        io.convert_to_nifti(source, tmp_path / "ct.nii.gz", series_uid="1.2.3")
    assert not (tmp_path / "ct.nii.gz").exists()
