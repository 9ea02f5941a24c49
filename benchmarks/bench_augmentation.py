"""Images per second of the 2D augmentation presets and of each transform in them.

Run: ``.venv/bin/python benchmarks/bench_augmentation.py`` (about 30 s), or ``--quick``.
Prints Markdown tables; ratios are against a flip-only pipeline timed in the same run
and the same OpenCV thread setting ("time x flip": seconds per image divided by the flip's),
because absolute numbers vary by ±20 % between runs.

Input: one 256 x 256 float32 slice in [0, 1] (a synthetic MR phantom, robust min-max)
with its uint8 label, one process, called as ``pipeline(image=..., mask=...)``.

Everything is measured with OpenCV's default thread pool (``cv2.getNumThreads()`` at
start) and with ``cv2.setNumThreads(1)``, interleaved, best of ``--rounds`` (3) rounds, so
that load from other processes does not favour one setting. Single images are too small for OpenCV's
threads to pay off, and in DataLoader workers they only compete with each other.

- Presets: `build_2d_augmentation` light / medium / heavy (``image_range="unit"``, each
  transform at its own probability), the heavy preset with ``image_range="zscore"``, and
  the seed outline's pipeline as albumentations 2.x runs it (`outline_augmentation`,
  without its final ``ToTensorV2``).
- Per transform: each transform of the heavy preset (plus `IntensityJitter`) with its
  preset arguments but ``p=1``, so the table shows the cost when it fires.
"""

from __future__ import annotations

import argparse
import copy
import sys
import time
import warnings
from pathlib import Path

import cv2
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import albumentations as A  # noqa: E402

from medseg_helpers.data.synthetic import make_case  # noqa: E402
from medseg_helpers.transforms import augment  # noqa: E402
from medseg_helpers.transforms.preprocess import normalise_minmax  # noqa: E402


def sample_pair(size: int = 256) -> tuple[np.ndarray, np.ndarray]:
    """A (size, size) float32 image in [0, 1] and its uint8 label (middle slice)."""
    image, label = make_case(0, "mr", 1, shape=(8, size, size))
    return normalise_minmax(image.array[4]), label.array[4].astype(np.uint8)


def images_per_second(pipeline, image, mask, min_seconds: float) -> float:
    for _ in range(5):  # warm-up: caches, lazy initialisation
        pipeline(image=image, mask=mask)
    count, start = 0, time.perf_counter()
    while True:
        for _ in range(20):
            pipeline(image=image, mask=mask)
        count += 20
        elapsed = time.perf_counter() - start
        if elapsed >= min_seconds:
            return count / elapsed


def pipelines() -> tuple[dict, dict]:
    """(presets, single transforms at p=1), each ``{name: A.Compose}``."""
    with warnings.catch_warnings():  # the outline's ignored arguments warn, by design
        warnings.simplefilter("ignore")
        outline = augment.outline_augmentation()
    presets = {name: augment.build_2d_augmentation(name, seed=0) for name in augment.PRESETS}
    presets["heavy (zscore)"] = augment.build_2d_augmentation("heavy", image_range="zscore", seed=0)
    presets["outline (2.x)"] = A.Compose(outline.transforms[:-1], seed=0)  # drop ToTensorV2
    singles = {}
    chosen = list(augment.build_2d_augmentation("heavy").transforms)
    chosen += list(augment.build_2d_augmentation("heavy", image_range="zscore").transforms)
    for transform in chosen:
        name = type(transform).__name__
        if name in singles:
            continue
        always = copy.deepcopy(transform)
        always.p = 1.0
        singles[name] = A.Compose([always], seed=0)
    return presets, singles


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="0.1 s per measurement")
    parser.add_argument("--seconds", type=float, default=0.25, help="time per measurement")
    parser.add_argument("--rounds", type=int, default=3, help="best of this many rounds")
    parser.add_argument("--size", type=int, default=256)
    args = parser.parse_args()
    seconds = 0.05 if args.quick else args.seconds
    args.rounds = 1 if args.quick else args.rounds
    image, mask = sample_pair(args.size)
    presets, singles = pipelines()
    default_threads = cv2.getNumThreads()
    results: dict[str, dict[int, float]] = {}
    for _ in range(args.rounds):  # interleaved, best of rounds: robust to load changes
        for name, pipeline in {**singles, **presets}.items():
            for threads in (default_threads, 1):
                cv2.setNumThreads(threads)
                rate = images_per_second(pipeline, image, mask, seconds)
                best = results.setdefault(name, {})
                best[threads] = max(best.get(threads, 0.0), rate)
    cv2.setNumThreads(default_threads)
    flip = results["HorizontalFlip"]
    header = (
        f"| {{}} | img/s, cv2 {default_threads} threads | time x flip | img/s, cv2 1 thread "
        "| time x flip | speed 1 thread / default |"
    )
    for title, names in (("preset", presets), ("transform (p=1)", singles)):
        print(f"\n### Per {title}: {args.size}x{args.size} float32, one process\n")
        print(header.format(title))
        print("|---|---:|---:|---:|---:|---:|")
        for name in names:
            many, one = results[name][default_threads], results[name][1]
            print(
                f"| {name} | {many:,.0f} | {flip[default_threads] / many:,.1f} | {one:,.0f} | "
                f"{flip[1] / one:,.1f} | {one / many:.2f} |"
            )
    heavy = results["heavy"][1]
    elastic = results["ElasticTransform"][1]
    print(
        f"\nElasticTransform fires in 30 % of heavy calls: ~{0.3 * heavy / elastic:.0%} of the "
        "heavy preset's time (1 thread)."
    )


if __name__ == "__main__":
    main()
