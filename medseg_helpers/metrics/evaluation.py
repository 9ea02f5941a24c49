"""Per-case, per-class evaluation tables: a model's test set or two folders of label maps.

One row per (case, class) with every metric of `medseg_helpers.metrics.overlap` (Dice, IoU,
accuracy, sensitivity, specificity, precision, voxel counts, volumes in mL) and of
`medseg_helpers.metrics.surface` (HD95, average symmetric surface distance, surface
Dice), all computed on the scan's own grid with its spacing in mm::

    table = evaluate_cases(trained)                 # TrainedModel: its test patients
    table = evaluate_folders("preds/", "labelsTr/")  # or two folders of NIfTI files
    summarise_metrics(table)                         # mean, std, median, n per class
    save_metrics_csv(table, "metrics.csv")

Conventions (each column of the table follows its module's docstring):

* a class absent from truth and prediction gives NaN for Dice, IoU, sensitivity,
  precision, HD95, ASD and NSD (the case says nothing about it; means skip NaN);
* a class present in only one of them gives Dice = IoU = NSD = 0 and, for HD95 and ASD,
  ``missing_distance``: by default the image diagonal in mm (BraTS' convention: the
  largest distance the image allows), so a missed lesion or a false alarm on a
  lesion-free scan counts as the worst boundary error instead of vanishing from the mean.
"""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pandas as pd

from medseg_helpers.data.decathlon import read_class_names
from medseg_helpers.data.volume import Volume
from medseg_helpers.fileutil import atomic_path
from medseg_helpers.metrics.overlap import confusion_matrix, overlap_metrics, volume_ml
from medseg_helpers.metrics.surface import boundary_metrics

logger = logging.getLogger(__name__)

__all__ = [
    "METRICS",
    "evaluate_case",
    "evaluate_cases",
    "evaluate_folders",
    "format_summary",
    "save_metrics_csv",
    "summarise_metrics",
]

#: Metric columns of an evaluation table, in order; ``_mm`` columns are distances in mm.
METRICS = ("dice", "iou", "accuracy", "sensitivity", "specificity", "precision", "hd95_mm",
           "asd_mm", "nsd", "truth_ml", "pred_ml", "volume_diff_ml")
MissingDistance = Literal["diagonal", "inf", "nan"]
Postprocess = Callable[[np.ndarray], np.ndarray]


def _missing_value(shape: Sequence[int], spacing_mm: Sequence[float],
                   missing: MissingDistance | float) -> float:
    if missing == "diagonal":
        return float(np.linalg.norm(np.asarray(shape) * np.asarray(spacing_mm)))
    if missing == "inf":
        return math.inf
    if missing == "nan":
        return math.nan
    if isinstance(missing, (int, float)):
        return float(missing)
    raise ValueError(f"missing_distance must be 'diagonal', 'inf', 'nan' or a number in mm, "
                     f"got {missing!r}")


def evaluate_case(pred: np.ndarray, truth: np.ndarray, spacing_mm: Sequence[float],
                  class_names: Sequence[str], case_id: str = "case", *,
                  tolerance_mm: float = 2.0, percentile: float = 95.0,
                  include_background: bool = False,
                  missing_distance: MissingDistance | float = "diagonal") -> list[dict[str, Any]]:
    """All metrics of one case, one dict per class.

    Args:
        pred: ``(Z, Y, X)`` (or ``(H, W)``) integer prediction on the truth's grid.
        truth: ground-truth labels, same shape, values in ``[0, len(class_names))``.
        spacing_mm: voxel size per array axis, mm.
        class_names: all classes in label order, background first.
        case_id: written to the ``case`` column.
        tolerance_mm: surface Dice tolerance.
        percentile: of the Hausdorff distance (95: HD95).
        include_background: also report class 0.
        missing_distance: HD95/ASD when exactly one mask of a class is empty:
            ``"diagonal"`` (image diagonal in mm), ``"inf"``, ``"nan"`` or a number (mm).

    Returns:
        rows with ``case``, ``class``, ``class_index``, ``truth_voxels``, ``pred_voxels``
        and the `METRICS`.
    """
    pred, truth = np.asarray(pred), np.asarray(truth)
    confusion = confusion_matrix(pred, truth, len(class_names))
    overlap = overlap_metrics(confusion)
    truth_voxels, pred_voxels = confusion.sum(axis=1), confusion.sum(axis=0)
    missing = _missing_value(truth.shape, spacing_mm, missing_distance)
    rows = []
    for c in range(0 if include_background else 1, len(class_names)):
        boundary = boundary_metrics(pred == c, truth == c, spacing_mm, tolerance_mm,
                                    percentile, empty_distance_mm=missing)
        truth_ml, pred_ml = volume_ml([truth_voxels[c], pred_voxels[c]], spacing_mm)
        rows.append({
            "case": case_id, "class": class_names[c], "class_index": c,
            "truth_voxels": int(truth_voxels[c]), "pred_voxels": int(pred_voxels[c]),
            **{name: float(overlap[name][c]) for name in METRICS[:6]},
            **boundary,
            "truth_ml": float(truth_ml), "pred_ml": float(pred_ml),
            "volume_diff_ml": float(pred_ml - truth_ml),
        })  # fmt: skip
    return rows


def _values(volume: Volume | np.ndarray) -> np.ndarray:
    return volume.array if isinstance(volume, Volume) else np.asarray(volume)


def _model_cases(trained: Any, case_ids: Sequence[str] | None) -> Iterable[tuple]:
    for case_id in case_ids if case_ids is not None else trained.split.test:
        yield case_id, trained.predict(case_id), trained.read_label(case_id)


def evaluate_cases(cases: Any, class_names: Sequence[str] | None = None,
                   case_ids: Sequence[str] | None = None, *,
                   postprocess: Postprocess | None = None, **options: Any) -> pd.DataFrame:
    """Evaluate many cases into one table.

    Args:
        cases: a `course_model.TrainedModel` (its predictions on the source grid against
            ``read_label``, for ``case_ids`` or its held-out test patients), or an
            iterable of ``(case_id, pred, truth)`` where ``pred`` is a `Volume` or array
            and ``truth`` a `Volume` (its spacing is used).
        class_names: all class names, background first; default the model's, else
            ``class_0`` ... ``class_{K-1}`` with ``K`` from the highest label in any
            prediction or truth (all cases are then read before scoring).
        case_ids: with a model, which patients (default ``split.test``).
        postprocess: applied to each prediction array first (e.g.
            `postprocess.keep_largest_component`).
        **options: passed to `evaluate_case` (``tolerance_mm``, ``percentile``,
            ``include_background``, ``missing_distance``).

    Returns:
        a DataFrame, one row per case and class (see `evaluate_case`).

    Raises:
        ValueError: a prediction and its truth differ in shape (case and shapes named).
    """
    if hasattr(cases, "predict") and hasattr(cases, "read_label"):
        class_names = class_names or list(cases.class_names)
        cases = _model_cases(cases, case_ids)
    if class_names is None:
        cases = list(cases)
        highest = max(int(np.max(_values(v))) for case in cases for v in case[1:])
        class_names = [f"class_{i}" for i in range(highest + 1)]
    rows: list[dict[str, Any]] = []
    for case_id, pred, truth in cases:
        pred_array = _values(pred)
        if not isinstance(truth, Volume):
            raise TypeError(f"case {case_id}: truth must be a Volume (it carries the spacing)")
        if pred_array.shape != truth.array.shape:
            raise ValueError(f"case {case_id}: prediction {pred_array.shape} and truth "
                             f"{truth.array.shape} are on different grids; resample the "
                             "prediction to the truth's grid first")
        if postprocess is not None:
            pred_array = postprocess(pred_array)
        rows += evaluate_case(pred_array, truth.array, truth.spacing_mm, class_names,
                              str(case_id), **options)
    if not rows:
        raise ValueError("no cases to evaluate")
    return pd.DataFrame(rows)


def _case_files(folder: Path) -> dict[str, Path]:
    from medseg_helpers.data.io import SUPPORTED_EXTENSIONS
    from medseg_helpers.data.splits import extract_patient_id

    if not folder.is_dir():
        raise FileNotFoundError(f"no such folder: {folder}")
    return {extract_patient_id(p): p for p in sorted(folder.iterdir())
            if p.is_file() and not p.name.startswith(".")
            and p.name.lower().endswith(tuple(SUPPORTED_EXTENSIONS))}


def evaluate_folders(pred_dir: str | os.PathLike, truth_dir: str | os.PathLike,
                     class_names: Sequence[str] | None = None,
                     spacing_from: Literal["truth", "pred"] = "truth",
                     allow_missing: bool = False, **options: Any) -> pd.DataFrame:
    """Evaluate the label maps in ``pred_dir`` against those of the same name in ``truth_dir``.

    Files are matched by case id (the name without ``.nii.gz``/``.nii``/``.nrrd``/
    ``.mha``), so ``preds/case_001.nii.gz`` pairs with ``labelsTr/case_001.nii.gz``.

    Args:
        pred_dir, truth_dir: folders of label maps.
        class_names: default: ``labels`` of a ``dataset.json`` next to ``truth_dir``,
            else ``class_0``...
        spacing_from: whose header gives the spacing; a differing spacing in the other
            is logged as a warning (shapes must match exactly).
        allow_missing: evaluate only the truths that have a prediction (e.g. the test
            cases of a ``labelsTr`` folder); default: a missing prediction is an error.
        **options: as in `evaluate_cases`.

    Raises:
        FileNotFoundError: a folder is missing or empty, a prediction has no truth, or
            (without ``allow_missing``) a truth has no prediction.
    """
    from medseg_helpers.data.io import read_volume

    if spacing_from not in ("truth", "pred"):
        raise ValueError(f"spacing_from must be 'truth' or 'pred', got {spacing_from!r}")
    preds, truths = _case_files(Path(pred_dir)), _case_files(Path(truth_dir))
    if not truths:
        raise FileNotFoundError(f"no label maps in {truth_dir}")
    unmatched = sorted(set(preds) - set(truths))
    if unmatched:
        raise FileNotFoundError(f"{len(unmatched)} predictions in {pred_dir} have no truth in "
                                f"{truth_dir}: {', '.join(unmatched[:5])}")
    missing = sorted(set(truths) - set(preds))
    if missing and not allow_missing:
        raise FileNotFoundError(f"{len(missing)} cases of {truth_dir} have no prediction in "
                                f"{pred_dir}: {', '.join(missing[:5])} (allow_missing=True, "
                                "or --allow-missing, evaluates only the predicted cases)")
    if missing:
        logger.info("%d truths without prediction skipped", len(missing))
        truths = {k: v for k, v in truths.items() if k in preds}
    class_names = class_names or _dataset_labels(Path(truth_dir))

    def pairs() -> Iterable[tuple[str, Volume, Volume]]:
        for case_id, truth_path in truths.items():
            pred, truth = read_volume(preds[case_id]), read_volume(truth_path)
            if not np.allclose(pred.spacing_mm, truth.spacing_mm, rtol=1e-3):
                logger.warning("%s: prediction spacing %s != truth spacing %s; using the %s's",
                               case_id, pred.spacing_mm, truth.spacing_mm, spacing_from)
            if spacing_from == "pred":
                truth = Volume(truth.array, pred.spacing_mm, truth.origin_mm, truth.direction)
            yield case_id, pred, truth

    return evaluate_cases(pairs(), class_names, **options)


def _dataset_labels(truth_dir: Path) -> list[str] | None:
    """Class names of the ``dataset.json`` in ``truth_dir`` or its parent (None: neither, or
    it declares no labels)."""
    for folder in (truth_dir, truth_dir.parent):
        if (folder / "dataset.json").is_file():
            return read_class_names(folder) or None
    return None


def summarise_metrics(table: pd.DataFrame, metrics: Sequence[str] | None = None) -> pd.DataFrame:
    """Mean, standard deviation, median and count of non-NaN values per class and metric.

    Args:
        table: from `evaluate_cases`.
        metrics: columns to summarise; default all `METRICS` present.

    Returns:
        index = class (in label order), columns = ``(metric, stat)`` with stats ``mean``,
        ``std`` (sample, ddof=1), ``median``, ``n``. NaN values are skipped; infinite
        ones propagate (an ``inf`` HD95 makes the mean ``inf``, honestly).
    """
    metrics = [m for m in (metrics or METRICS) if m in table.columns]
    order = table.drop_duplicates("class").sort_values("class_index")["class"].tolist()
    grouped = table.groupby("class", sort=False)[metrics]
    summary = grouped.agg(["mean", "std", "median", "count"]).rename(columns={"count": "n"})
    return summary.reindex(order)


def format_summary(summary: pd.DataFrame, digits: int = 3) -> pd.DataFrame:
    """``"mean ± std (median)"`` strings per class and metric, for display."""
    metrics = summary.columns.get_level_values(0).unique()
    return pd.DataFrame({
        m: [f"{row[(m, 'mean')]:.{digits}f} ± {row[(m, 'std')]:.{digits}f} "
            f"({row[(m, 'median')]:.{digits}f})" for _, row in summary.iterrows()]
        for m in metrics}, index=summary.index)  # fmt: skip


def save_metrics_csv(table: pd.DataFrame, path: str | os.PathLike) -> Path:
    """Write ``table`` as CSV atomically (a reader never sees half a file); returns the path."""
    path = Path(path)
    with atomic_path(path) as tmp:
        table.to_csv(tmp, index=False, float_format="%.6g")
    return path
