"""Size, latency and Dice of each deployment variant of the course model (one table).

Run: ``.venv/bin/python benchmarks/bench_inference.py --profile full`` (uses the model
notebook 05 trained under ``$MEDSEG_RUN_DIR``, training it first if missing), or
``--run-dir DIR`` for any finished training run; ``--quick`` for a smoke run. The service
throughput is measured by ``bench_service.py``.

Rows (all from `medseg_helpers.deploy.variants.variant_table`, on the run's held-out test
patients, Dice on the preprocessed grid, latency = median time per whole volume with
rounds interleaved across variants, speed-up = eager / variant in this run):

- ``eager``: the PyTorch model under ``torch.inference_mode``.
- ``TorchScript`` (legacy), ``torch.export`` (``.pt2``), ``ORT fp32`` (ONNX Runtime).
- ``ORT int8``: static QDQ int8 calibrated on 32 real training slices; ``ORT int8 (noise
  calib.)``: the same calibrated on Gaussian noise, the mistake to avoid.
- ``unstructured`` / ``channels``: pruned (``--prune`` fraction), fine-tuned
  ``--fine-tune-steps`` steps, made permanent; channels physically removed.
"""

from __future__ import annotations

import argparse
import copy
import os
import tempfile
import time
from pathlib import Path

import numpy as np
import torch


def build_variants(trained, folder: Path, args: argparse.Namespace) -> dict:
    from medseg_helpers.deploy import prune
    from medseg_helpers.deploy.export import (
        export_onnx,
        export_program,
        export_torchscript,
    )
    from medseg_helpers.deploy.quantize import quantize_onnx_int8
    from medseg_helpers.deploy.variants import calibration_images, example_input, quiet_exporters

    model = trained.model
    example = example_input(trained)
    with quiet_exporters():
        onnx_path = export_onnx(model, example, folder / "m.onnx")
        ts_path = export_torchscript(model, example, folder / "m.pt")
        pt2_path = export_program(model, example, folder / "m.pt2")
        real = calibration_images(trained, count=32, seed=0)
        rng = np.random.default_rng(0)
        noise = [rng.normal(size=c.shape).astype(np.float32) for c in real]
        int8 = quantize_onnx_int8(onnx_path, folder / "m_int8.onnx", real)
        int8_noise = quantize_onnx_int8(onnx_path, folder / "m_int8_noise.onnx", noise)
    unstructured = prune.prune_unstructured(copy.deepcopy(model), args.prune)
    prune.fine_tune(unstructured, trained, args.fine_tune_steps, validate=False)
    channels = prune.prune_channels(copy.deepcopy(model), args.prune)
    prune.fine_tune(channels, trained, args.fine_tune_steps, validate=False)
    return {"eager": model, "TorchScript": ts_path, "torch.export": pt2_path,
            "ORT fp32": onnx_path, "ORT int8": int8, "ORT int8 (noise calib.)": int8_noise,
            f"unstructured {args.prune:.0%}": prune.make_permanent(unstructured),
            f"channels {args.prune:.0%} removed": prune.remove_pruned_channels(channels)}


def main() -> None:
    from medseg_helpers.course.model import (
        course_model_config,
        ensure_trained_model,
        load_trained_model,
    )
    from medseg_helpers.deploy.variants import variant_table

    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--profile", default=None, help="course model of this profile")
    parser.add_argument("--run-dir", default=None, help="a finished training run instead")
    parser.add_argument("--threads", type=int, default=min(2, os.cpu_count() or 1))
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--prune", type=float, default=0.5)
    parser.add_argument("--fine-tune-steps", type=int, default=60)
    parser.add_argument("--quick", action="store_true", help="smoke profile, few repetitions")
    args = parser.parse_args()
    if args.quick:
        args.profile, args.repeats, args.fine_tune_steps = args.profile or "smoke", 2, 2
    torch.set_num_threads(args.threads)
    trained = (load_trained_model(args.run_dir, device="cpu") if args.run_dir else
               ensure_trained_model(course_model_config(args.profile), device="cpu"))
    with tempfile.TemporaryDirectory(prefix="bench-inference-") as tmp:
        os.environ.setdefault("XDG_CACHE_HOME", str(Path(tmp) / "cache"))
        start = time.perf_counter()
        variants = build_variants(trained, Path(tmp), args)
        table = variant_table(trained, variants, repeats=args.repeats, num_threads=args.threads)
        seconds = time.perf_counter() - start
    image, _ = trained.preprocessed(trained.split.test[0])
    print(f"torch {torch.__version__}, {args.threads} threads, load average "
          f"{os.getloadavg()[0]:.1f}; model {trained.run_dir.name} (best val Dice "
          f"{trained.metrics.get('best_val_dice', float('nan')):.3f}); "
          f"{len(trained.split.test)} test patients, volume (C, D, H, W) = "
          f"{tuple(image.shape)}; {seconds:.0f} s")
    print()
    print(markdown_table(table))


def markdown_table(table) -> str:
    """A DataFrame as a Markdown table (pandas' ``to_markdown`` needs ``tabulate``)."""
    columns = ["variant", *table.columns]
    lines = ["| " + " | ".join(columns) + " |", "|---" + "|---:" * len(table.columns) + "|"]
    for name, row in table.iterrows():
        lines.append("| " + " | ".join([str(name), *(f"{v:.4g}" for v in row)]) + " |")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
