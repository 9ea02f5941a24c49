"""The course model: time-to-Dice and test Dice over seeds, its recipe against the previous one.

Run: ``.venv/bin/python benchmarks/bench_course_model.py`` (3 seeds x 2 recipes; about
20 minutes on 2 idle cores), ``--seeds 0`` for one seed, ``--quick`` for a smoke run.
Measure with nothing else running: two PyTorch processes on 2 cores slow each other far
more than 2x.

Both recipes train on the profile's course dataset (80 synthetic patients under ``full``,
split 60/20/20 % by patient, stratified by lesion presence; ``--cases N`` generates
another size), with the same seed, through `train_from_config`:

- ``course``: `course_model_config` of the profile, as notebook 05 trains it: under
  ``full`` a U-Net of width 8 on 64x64 crops, half of them centred on a lesion pixel and
  a quarter on the organ (`SliceCropDataset`), light augmentation (flip, small affine,
  intensity), 10 epochs of 128 steps, cosine schedule with warm-up;
- ``course-bf16``: the same under bfloat16 autocast (``cpu_bf16=True``; on a CPU without
  AVX-512 BF16 or AMX it is ignored and both rows are the same computation);
- ``previous``: the recipe it replaced (`PREVIOUS`): width 16 on whole 96x96 slices, 10 %
  empty slices, no augmentation, batch 16, lr 3e-3, 9 epochs (on 48 training patients
  about as many steps as the former 30 epochs on 14).

Printed: per recipe and seed, the training seconds, the best and last validation Dice,
and the test patients' mean foreground Dice and per-class Dice of the best checkpoint
(`evaluate_cases` conventions: a false alarm on a case without the class scores 0, a
class absent from both is skipped), raw and ``_post`` (after the post-processing rule
`choose_postprocessing` picks on the validation patients, as notebooks 06-10 use the
model: a few stray voxels on a lesion-free patient score its lesion Dice 0); then the
time-to-Dice curve: validation mean Dice
against cumulative wall seconds (an epoch's seconds include its validation pass).
``--plot PATH`` saves the curves as PNG.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from pathlib import Path
from typing import Any

import pandas as pd

#: The course recipe before crops: what ``previous`` changes in the ``full`` course recipe.
PREVIOUS: dict[str, Any] = {"crop_size": None, "empty_slice_fraction": 0.1, "augmentation": None,
                            "model_kwargs": {"base_channels": 16}, "max_epochs": 9, "lr": 3e-3,
                            "warmup_epochs": 1, "val_every": 1}


def train_and_test(recipe: str, seed: int, profile: str, data_dir: Path, run_root: Path,
                   quick: bool, max_epochs: int | None = None
                   ) -> tuple[dict[str, Any], pd.DataFrame]:
    """Train one recipe with one seed; return its summary row and validation curve.
    ``max_epochs`` shortens a course recipe (its schedule still anneals to 0); the row's
    recipe is then called ``<recipe>-e<max_epochs>``."""
    from medseg_helpers.course.model import (
        choose_postprocessing,
        course_model_config,
        load_trained_model,
    )
    from medseg_helpers.metrics.evaluation import evaluate_cases
    from medseg_helpers.training.job import train_from_config

    overrides: dict[str, Any] = (dict(PREVIOUS) if recipe == "previous" else
                                 {"cpu_bf16": True} if recipe == "course-bf16" else {})
    if max_epochs and recipe != "previous":
        overrides["max_epochs"] = max_epochs
        recipe = f"{recipe}-e{max_epochs}"
    if quick:
        overrides.update(max_epochs=1, samples_per_epoch=32)
    config = course_model_config(profile, seed=seed, progress=False, tensorboard=False,
                                 data_dir=str(data_dir), val_fraction=0.2, test_fraction=0.2,
                                 run_dir=str(run_root / f"{recipe}-seed{seed}"), **overrides)
    metrics = train_from_config(config)
    history = pd.DataFrame(metrics["history"])
    curve = pd.DataFrame({"recipe": recipe, "seed": seed,
                          "seconds": history["seconds"].cumsum(),
                          "val_dice": history["val_dice"]}).dropna()
    model = load_trained_model(metrics["run_dir"])
    rule, _ = choose_postprocessing(model)
    row = {"recipe": recipe, "seed": seed, "train_s": round(metrics["seconds"], 1),
           "best_val_dice": round(metrics["best_val_dice"], 3),
           "last_val_dice": round(metrics["last_val_dice"], 3)}
    row["postprocessing"] = rule.describe(model.class_names)
    raw = {p: model.predict(p, postprocess=False) for p in model.split.test}  # one pass
    for suffix, postprocess in (("", lambda v: v), ("_post", rule.apply)):
        table = evaluate_cases(((p, postprocess(raw[p]), model.read_label(p))
                                for p in model.split.test), model.class_names)
        per_class = table.groupby("class", sort=False)["dice"].mean()
        row.update({"test_cases": table["case"].nunique(),
                    f"test_mean{suffix}": round(float(per_class.mean()), 3),
                    **{f"test_{name}{suffix}": round(float(v), 3)
                       for name, v in per_class.items()}})
    return row, curve


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--profile", default="full")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--recipes", nargs="+", default=["course", "previous"],
                        choices=["course", "course-bf16", "previous"])
    parser.add_argument("--cases", type=int, default=None,
                        help="synthetic patients (default: the profile's course dataset)")
    parser.add_argument("--max-epochs", type=int, default=None,
                        help="shorten the course recipes to this many epochs (cosine to 0)")
    parser.add_argument("--quick", action="store_true", help="one tiny epoch: a smoke run")
    parser.add_argument("--plot", type=Path, help="save the time-to-Dice curves as PNG")
    args = parser.parse_args(argv)

    from medseg_helpers.course.data import ensure_course_dataset, ensure_synthetic_dataset
    from medseg_helpers.device import describe_environment
    from medseg_helpers.paths import get_data_dir

    env = describe_environment()
    print(f"# bench_course_model: profile {args.profile}, torch {env['torch']}, "
          f"{os.cpu_count()} cores, {env['cpu threads']} threads, device {env['device']}, "
          f"CPU {env['cpu']}")
    data_dir = (ensure_course_dataset(args.profile) if args.cases is None  # before any clock
                else ensure_synthetic_dataset(
                    args.profile, num_cases=args.cases,
                    out_dir=get_data_dir(create=True) / f"Synthetic_MR_bench{args.cases}"))
    rows, curves = [], []
    with tempfile.TemporaryDirectory() as tmp:
        for seed in args.seeds:  # recipes interleaved within each seed
            for recipe in args.recipes:
                row, curve = train_and_test(recipe, seed, args.profile, data_dir, Path(tmp),
                                            args.quick, args.max_epochs)
                print(row, flush=True)
                rows.append(row)
                curves.append(curve)
    table = pd.DataFrame(rows)
    print("\n## Test Dice per seed\n")
    print(table.to_string(index=False))
    summary = table.groupby("recipe")[[c for c in table if c.startswith("test_")
                                      and c != "test_cases"] + ["train_s"]].agg(["mean", "min"])
    print("\n## Over seeds (mean, min)\n")
    print(summary.round(3).to_string())
    curve = pd.concat(curves)
    print("\n## Time to Dice (validation mean foreground Dice by cumulative seconds)\n")
    print(curve.round(3).to_string(index=False))
    if args.plot:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, ax = plt.subplots(figsize=(6, 4))
        for (recipe, seed), part in curve.groupby(["recipe", "seed"]):
            ax.plot(part["seconds"], part["val_dice"], marker=".",
                    color="C0" if recipe.startswith("course") else "C1", alpha=0.4 + 0.2 * seed,
                    label=f"{recipe}, seed {seed}")
        ax.set(xlabel="training wall seconds (validation included)",
               ylabel="validation mean foreground Dice", ylim=(0, 1))
        ax.legend(fontsize=8)
        fig.tight_layout()
        fig.savefig(args.plot, dpi=120)
        print(f"\ncurves saved to {args.plot}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
