"""What a run directory records: ``history.csv``, TensorBoard scalars, ``config.yaml``,
``metrics.json``, and a plot of the curves.

Columns of ``history.csv`` (one row per finished epoch; validation columns are empty on
epochs without validation):

``epoch`` (1-based), ``lr`` (at the end of the epoch), ``train_loss`` (mean over batches),
``val_loss``, ``val_dice`` (mean foreground Dice), ``dice_<class>`` per foreground class,
``seconds`` (wall time of the epoch incl. validation).
"""

from __future__ import annotations

import csv
import io
import json
import logging
import math
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from medseg_helpers.fileutil import to_json_ready, write_text_atomic

logger = logging.getLogger(__name__)

BASE_COLUMNS = ("epoch", "lr", "train_loss", "val_loss", "val_dice")

__all__ = ["BASE_COLUMNS", "HistoryWriter", "plot_history", "summarise_history",
           "write_config_yaml", "write_history_csv", "write_metrics_json"]


def summarise_history(rows: Sequence[Mapping[str, Any]], best_epoch: int,
                      class_names: Sequence[str]) -> dict[str, Any]:
    """The headline numbers of a run from its epoch rows (NaN where never validated).

    Returns:
        ``best_val_dice``, ``best_epoch``, ``best_dice_per_class`` (``{name: Dice}`` at the
        best epoch), ``last_val_dice``, ``epochs_completed``, ``train_loss`` (last epoch).
    """
    validated = [row for row in rows if not _is_missing(row.get("val_dice"))]
    best = next((row for row in validated if row["epoch"] == best_epoch), None)
    return {
        "best_val_dice": best["val_dice"] if best else math.nan,
        "best_epoch": best_epoch if best else 0,
        "best_dice_per_class": {n: best[f"dice_{n}"] for n in class_names} if best else {},
        "last_val_dice": validated[-1]["val_dice"] if validated else math.nan,
        "epochs_completed": int(rows[-1]["epoch"]) if rows else 0,
        "train_loss": rows[-1]["train_loss"] if rows else math.nan,
    }


def write_metrics_json(metrics: Mapping[str, Any], path: str | os.PathLike) -> Path:
    """Write ``metrics`` as indented JSON atomically (`to_json_ready`: NaN as ``null``)."""
    return write_text_atomic(path, json.dumps(to_json_ready(metrics), indent=2) + "\n")


def write_config_yaml(config: Mapping[str, Any], path: str | os.PathLike) -> Path:
    """Write a config dict as YAML atomically (`to_json_ready`: tuples as lists, paths as
    strings, NaN as null)."""
    import yaml

    return write_text_atomic(path, yaml.safe_dump(to_json_ready(config), sort_keys=False))


def write_history_csv(rows: Sequence[Mapping[str, Any]], path: str | os.PathLike) -> Path:
    """Write epoch rows to ``path`` atomically; columns in `BASE_COLUMNS` order, then the rest.

    NaN and missing values are written as empty cells.
    """
    columns = list(BASE_COLUMNS)
    for row in rows:
        columns += [key for key in row if key not in columns]
    if "seconds" in columns:  # keep the time last
        columns.append(columns.pop(columns.index("seconds")))
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=columns, lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({k: "" if _is_missing(v) else v for k, v in row.items()})
    return write_text_atomic(path, buffer.getvalue())


def _is_missing(value: Any) -> bool:
    return value is None or (isinstance(value, float) and math.isnan(value))


class HistoryWriter:
    """Writes ``history.csv`` after every epoch and, if available, TensorBoard scalars.

    Args:
        run_dir: the run directory; ``history.csv`` and ``tensorboard/`` go there.
        tensorboard: also log to TensorBoard. Skipped (with a log message) when
            ``torch.utils.tensorboard`` cannot be imported.
    """

    def __init__(self, run_dir: str | os.PathLike, tensorboard: bool = True) -> None:
        self.run_dir = Path(run_dir)
        self.csv_path = self.run_dir / "history.csv"
        self._tb = None
        if tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter
            except ImportError as error:
                logger.info("TensorBoard logging skipped: %s", error)
            else:
                self._tb = SummaryWriter(log_dir=str(self.run_dir / "tensorboard"))

    @property
    def tensorboard_enabled(self) -> bool:
        return self._tb is not None

    def write(self, rows: Sequence[Mapping[str, Any]]) -> None:
        """Rewrite the CSV with all ``rows`` and log the last one to TensorBoard."""
        write_history_csv(rows, self.csv_path)
        if self._tb is not None and rows:
            row = rows[-1]
            for key, value in row.items():
                if key != "epoch" and isinstance(value, (int, float)) and not _is_missing(value):
                    self._tb.add_scalar(key, value, global_step=int(row["epoch"]))
            self._tb.flush()

    def close(self) -> None:
        if self._tb is not None:
            self._tb.close()
            self._tb = None


def plot_history(history: Any, title: str | None = None) -> Any:
    """Loss, Dice and learning-rate curves of a run.

    Args:
        history: a path to ``history.csv``, a run directory holding one, or a
            ``pandas.DataFrame`` with its columns.
        title: figure title.

    Returns:
        A matplotlib ``Figure`` with three panels: train/val loss, validation Dice (mean
        foreground and per class), learning rate (log scale), all against the epoch.
    """
    import matplotlib.pyplot as plt
    import pandas as pd

    if not isinstance(history, pd.DataFrame):
        path = Path(history)
        history = pd.read_csv(path / "history.csv" if path.is_dir() else path)
    from matplotlib.ticker import MaxNLocator

    fig, (ax_loss, ax_dice, ax_lr) = plt.subplots(1, 3, figsize=(13, 3.6),
                                                  constrained_layout=True)
    for column, label in (("train_loss", "training"), ("val_loss", "validation")):
        if column in history and history[column].notna().any():
            data = history[["epoch", column]].dropna()
            ax_loss.plot(data["epoch"], data[column], marker=".", label=label)
    ax_loss.set(xlabel="epoch", ylabel="loss", title="Loss")
    for column in ["val_dice", *[c for c in history.columns if c.startswith("dice_")]]:
        if column in history and history[column].notna().any():
            data = history[["epoch", column]].dropna()
            label = "mean foreground" if column == "val_dice" else column.removeprefix("dice_")
            ax_dice.plot(data["epoch"], data[column], marker=".", label=label,
                         linewidth=2.5 if column == "val_dice" else 1.0)
    ax_dice.set(xlabel="epoch", ylabel="Dice", title="Validation Dice", ylim=(0, 1))
    if "lr" in history:
        ax_lr.plot(history["epoch"], history["lr"], marker=".")
        if (history["lr"] > 0).all():
            ax_lr.set_yscale("log")
    ax_lr.set(xlabel="epoch", ylabel="learning rate", title="Learning rate")
    for ax in (ax_loss, ax_dice, ax_lr):
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))  # epochs are whole numbers
    for ax in (ax_loss, ax_dice):
        if ax.get_legend_handles_labels()[0]:
            ax.legend()
    if title:
        fig.suptitle(title)
    return fig
