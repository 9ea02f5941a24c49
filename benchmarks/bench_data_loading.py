"""Slices per second for one epoch: the outline's per-item loader against our slice cache.

Run: ``.venv/bin/python benchmarks/bench_data_loading.py`` (about a minute on 2 cores), or
``--quick`` for a smoke run. Prints a Markdown table; every ratio is against a loader
measured in the same run, because absolute numbers vary by ±20 % between runs.

Data: 20 synthetic MR volumes of 64 x 128 x 128 (Z, Y, X), 1,280 axial slices, written as
``.nii.gz`` (as in the Decathlon) and as uncompressed ``.nii`` into a temporary folder.
The page cache is warm for every loader (the files were just written), so the naive
numbers are a best case; on a cold disk they are worse.

Rows (all read image and label slices in one shuffled order):

- ``naive .nii.gz, item = slice``: `NaiveVolumeDataset(per_slice=True)`, the outline's
  Dataset adapted to 2D training the way it usually is: each slice item re-reads and
  re-normalises (``/max``) its whole volume. The **baseline** (``x naive``). When it would
  take longer than ``--budget-s`` it runs on a random subset of items and is scaled.
- ``naive .nii, item = slice``: the same on uncompressed files (no gzip).
- ``outline as written, item = volume``: `NaiveVolumeDataset()`, one item = all slices of a
  volume as a list (one read per volume, but batches are volumes, not shuffled slices).
- ``SliceCache: build + first epoch``: `build_slice_cache` (read, check, z-score, write the
  memory-mapped arrays) plus one epoch of `SliceDataset`.
- ``SliceDataset, later epoch``: items from the existing cache (tensors, dicts).
- ``SliceDataset + DataLoader``: the same through `make_dataloader` (batch 16, collate).
- ``raw memmap read``: ``np.array(images[i]), np.array(labels[i])`` on the cache files, the
  ceiling (``x memmap``).

Targets (issue 4): later epochs >= 1000x naive and >= 0.5x raw memmap;
issue floor >= 10x naive.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from medseg_helpers.data.datasets import (  # noqa: E402
    NaiveVolumeDataset,
    SliceDataset,
    make_dataloader,
)
from medseg_helpers.data.decathlon import Case, read_decathlon  # noqa: E402
from medseg_helpers.data.io import read_volume, write_volume  # noqa: E402
from medseg_helpers.data.slice_cache import build_slice_cache  # noqa: E402
from medseg_helpers.data.synthetic import generate_dataset  # noqa: E402


def time_items(get_item, order: np.ndarray, budget_s: float) -> tuple[int, float]:
    """Fetch items in ``order`` until done or ``budget_s`` is spent: (items, seconds)."""
    start = time.perf_counter()
    done = 0
    for index in order:
        get_item(int(index))
        done += 1
        if time.perf_counter() - start > budget_s:
            break
    return done, time.perf_counter() - start


def to_uncompressed(cases: list[Case], folder: Path) -> list[Case]:
    """Copies of the cases as ``.nii`` files."""
    out = []
    for case in cases:
        paths = []
        for path, kind in ((case.image_path, "imagesTr"), (case.label_path, "labelsTr")):
            target = folder / kind / path.name.replace(".nii.gz", ".nii")
            paths.append(write_volume(read_volume(path), target))
        out.append(Case(case.patient_id, paths[0], paths[1], case.label_values))
    return out


def run(num_cases: int, shape: tuple[int, int, int], budget_s: float, seed: int) -> list[dict]:
    rows = []
    with tempfile.TemporaryDirectory(prefix="bench_data_") as tmp:
        root = Path(tmp)
        generate_dataset(root / "gz", "mr", num_cases, shape, seed=seed)
        cases = read_decathlon(root / "gz")
        nii_cases = to_uncompressed(cases, root / "nii")
        total = num_cases * shape[0]
        order = np.random.default_rng(seed).permutation(total)

        def naive(case_list, name, per_slice):
            dataset = NaiveVolumeDataset(
                [c.image_path for c in case_list],
                [c.label_path for c in case_list],
                per_slice=per_slice,
            )
            items = order if per_slice else np.random.default_rng(seed).permutation(num_cases)
            done, seconds = time_items(dataset.__getitem__, items, budget_s)
            slices = done if per_slice else done * shape[0]
            rows.append({"loader": name, "slices": slices, "seconds": seconds})

        naive(cases, "naive .nii.gz, item = slice (baseline)", True)
        naive(nii_cases, "naive .nii, item = slice", True)
        naive(cases, "outline as written, item = volume", False)

        start = time.perf_counter()
        cache = build_slice_cache(cases, root / "cache")
        dataset = SliceDataset(cache)
        done, seconds = time_items(dataset.__getitem__, order, float("inf"))
        seconds_total = time.perf_counter() - start
        rows.append(
            {"loader": "SliceCache: build + first epoch", "slices": done, "seconds": seconds_total}
        )
        epochs = []
        for _ in range(3):  # best of three later epochs
            epochs.append(time_items(dataset.__getitem__, order, float("inf")))
        done, seconds = min(epochs, key=lambda r: r[1])
        rows.append({"loader": "SliceDataset, later epoch", "slices": done, "seconds": seconds})

        loader = make_dataloader(dataset, batch_size=16, shuffle=True, seed=seed)
        start = time.perf_counter()
        done = sum(len(batch["image"]) for batch in loader)
        rows.append(
            {
                "loader": "SliceDataset + DataLoader (batch 16)",
                "slices": done,
                "seconds": time.perf_counter() - start,
            }
        )

        images = np.load(cache.path / "images.npy", mmap_mode="r")
        labels = np.load(cache.path / "labels.npy", mmap_mode="r")

        def raw(index: int):
            return np.array(images[index]), np.array(labels[index])

        reads = [time_items(raw, order, float("inf")) for _ in range(3)]
        done, seconds = min(reads, key=lambda r: r[1])
        rows.append({"loader": "raw memmap read (ceiling)", "slices": done, "seconds": seconds})
    return rows


def print_table(rows: list[dict], title: str) -> None:
    rate = {r["loader"]: r["slices"] / r["seconds"] for r in rows}
    naive = rate[rows[0]["loader"]]
    ceiling = rate["raw memmap read (ceiling)"]
    print(f"### {title}\n")
    print("| loader | slices timed | seconds | slices/s | x naive | x memmap |")
    print("|---|---:|---:|---:|---:|---:|")
    for r in rows:
        s = rate[r["loader"]]
        print(
            f"| {r['loader']} | {r['slices']} | {r['seconds']:.3f} | {s:,.0f} | "
            f"{s / naive:,.1f} | {s / ceiling:.2f} |"
        )
    later = rate["SliceDataset, later epoch"]
    print(
        f"\nSliceDataset later epoch: {later / naive:,.0f}x naive (target >= 1000x, issue "
        f"floor >= 10x), {later / ceiling:.2f}x raw memmap (target >= 0.5x)."
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="4 volumes of 16x64x64")
    parser.add_argument("--cases", type=int, default=20)
    parser.add_argument("--shape", type=int, nargs=3, default=(64, 128, 128), metavar="N")
    parser.add_argument(
        "--budget-s",
        type=float,
        default=15.0,
        help="time limit per naive loader (scaled from a subset beyond it)",
    )
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    cases, shape = (4, (16, 64, 64)) if args.quick else (args.cases, tuple(args.shape))
    start = time.perf_counter()
    rows = run(cases, shape, 2.0 if args.quick else args.budget_s, args.seed)
    title = f"One epoch over {cases} volumes of {shape[0]}x{shape[1]}x{shape[2]} (Z, Y, X)"
    print_table(rows, title)
    elapsed = time.perf_counter() - start
    print(f"\n(total benchmark time {elapsed:.0f} s, including data generation)")


if __name__ == "__main__":
    main()
