"""Size, latency and Dice of each deployment variant of the course model (two tables).

Run: ``.venv/bin/python benchmarks/bench_inference.py --profile full`` (uses the model
notebook 05 trained under ``$MEDSEG_RUN_DIR``, training it first if missing), or
``--run-dir DIR`` for any finished training run; ``--quick`` for a smoke run;
``--no-compile`` skips the ``torch.compile`` rows (they compile for tens of seconds).
The service throughput is measured by ``bench_service.py``.

**Table 1, the 2D course model on its test patients** (all rows from
`medseg_helpers.deploy.variants.variant_table`: Dice on the preprocessed grid, latency =
median time per whole volume with rounds interleaved across variants, speed-up = eager /
variant in this run, agreement = share of voxels classed as eager classes them):

- ``eager``: the PyTorch model under ``torch.inference_mode`` (the baseline);
  ``eager bf16 channels-last``: ``torch.autocast`` bfloat16 with channels-last tensors.
- ``TorchScript`` (legacy), ``torch.export`` (``.pt2``); ``torch.compile`` (inductor) in
  float32 and under bf16 autocast.
- ``ORT fp32 (default options)``: ONNX Runtime with ``SessionOptions()`` untouched;
  ``ORT fp32``: the course's settings (intra-op threads = ``--threads``, one inter-op
  thread).
- ``ORT int8 s8, transposed conv``: the former int8 recipe (signed activations, the
  U-Net's transposed convolutions left in float); ``ORT int8``: `variants.export_int8`
  (unsigned activations, transposed convolutions rewritten as 1x1 conv + pixel shuffle);
  ``ORT int8 (noise calib.)``: the same calibrated on Gaussian noise, the mistake to avoid.
- ``OpenVINO fp32 / bf16 / int8`` (if ``openvino`` is installed): the same two files.
- ``channels 50 % removed``: pruned (``--prune``), fine-tuned ``--fine-tune-steps``
  steps, channels removed; in eager and in the fastest runtime (OpenVINO bf16 if
  installed, else ONNX Runtime).

**Table 2, 3D sliding-window inference** on a ``--volume``-sized volume (default 128³,
a real phantom scan resized): a 3D U-Net of the course's width and depth, windows of
``--roi`` (default 64³), 4 per call, Gaussian-weighted blending
(`medseg_helpers.inferers.SlidingWindowInferer`). Its weights are untrained (batch-norm
statistics from real volumes, int8 calibrated on real volumes), so the table reports
agreement with eager and the largest logit difference instead of Dice.

Then per-operator profiles (`medseg_helpers.deploy.profiling`) of eager, ORT fp32 and
ORT int8 on one batch of 16 test slices: where the time goes, and which operators the
int8 graph still runs in float.
"""

from __future__ import annotations

import argparse
import copy
import os
import statistics
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
    from medseg_helpers.deploy.runtime import openvino_available
    from medseg_helpers.deploy.trained_export import (
        calibration_images,
        example_input,
        export_int8,
        quiet_exporters,
    )
    from medseg_helpers.deploy.variants import ExportedVariant, TorchVariant

    model = trained.model
    example = example_input(trained)
    real = calibration_images(trained, count=32, seed=0)
    rng = np.random.default_rng(0)
    noise = [rng.normal(size=c.shape).astype(np.float32) for c in real]
    with quiet_exporters():
        onnx_path = export_onnx(model, example, folder / "m.onnx")
        ts_path = export_torchscript(model, example, folder / "m.pt")
        pt2_path = export_program(model, example, folder / "m.pt2")
        int8_s8 = quantize_onnx_int8(onnx_path, folder / "m_int8_s8.onnx", real,
                                     activation_type="int8")
        int8_noise = quantize_onnx_int8(onnx_path, folder / "m_int8_noise.onnx", noise)
    int8 = export_int8(trained, folder / "m_int8.onnx")
    channels = prune.prune_channels(copy.deepcopy(model), args.prune)
    prune.fine_tune(channels, trained, args.fine_tune_steps, validate=False)
    thin = prune.remove_pruned_channels(channels)
    with quiet_exporters():
        thin_path = export_onnx(thin, example, folder / "m_thin.onnx")
    variants = {"eager": model,
                "eager bf16 channels-last": TorchVariant(model, bf16=True, channels_last=True),
                "TorchScript": ts_path, "torch.export": pt2_path}
    if args.compile:
        variants["torch.compile fp32"] = TorchVariant(copy.deepcopy(model), compile=True)
        variants["torch.compile bf16"] = TorchVariant(copy.deepcopy(model), bf16=True,
                                                      compile=True)
    variants.update({
        "ORT fp32 (default options)": ExportedVariant(onnx_path, default_options=True),
        "ORT fp32": onnx_path, "ORT int8 s8, transposed conv": int8_s8, "ORT int8": int8,
        "ORT int8 (noise calib.)": int8_noise})
    fastest = ("openvino", "bf16") if openvino_available() else ("onnxruntime", "fp32")
    if openvino_available():
        variants.update({"OpenVINO fp32": ExportedVariant(onnx_path, "openvino"),
                         "OpenVINO bf16": ExportedVariant(onnx_path, "openvino", "bf16"),
                         "OpenVINO int8": ExportedVariant(int8, "openvino")})
    variants[f"channels {args.prune:.0%} removed"] = thin
    variants[f"channels {args.prune:.0%} removed, {' '.join(fastest)}"] = ExportedVariant(
        thin_path, *fastest)
    return variants


def volume_table(trained, folder: Path, args: argparse.Namespace) -> tuple[list[dict], tuple]:
    """Table 2 (see the module docstring): rows of latency, speed-up, agreement, diff."""
    import torch.nn.functional as F

    from medseg_helpers.deploy.export import export_onnx
    from medseg_helpers.deploy.quantize import quantize_onnx_int8
    from medseg_helpers.deploy.runtime import load_onnx, openvino_available
    from medseg_helpers.deploy.trained_export import quiet_exporters
    from medseg_helpers.inferers import SlidingWindowInferer
    from medseg_helpers.networks.unet import UNet

    torch.manual_seed(0)
    model = UNet(3, 1, trained.num_classes, base_channels=8, depth=3)

    def resized(pid: str) -> torch.Tensor:  # (1, 1, S, S, S)
        image, _ = trained.preprocessed(pid)
        return F.interpolate(image[None].float(), size=(args.volume,) * 3, mode="trilinear")

    model.train()
    with torch.no_grad():  # batch-norm statistics of real volumes
        for pid in trained.split.train[:8]:
            model(resized(pid)[..., :args.roi, :args.roi, :args.roi])
    model.eval()
    volume = resized(trained.split.test[0])
    roi = (args.roi,) * 3
    calibration = [resized(pid)[0, :, :args.roi, :args.roi, :args.roi].numpy()
                   for pid in trained.split.train[8:16]]
    with quiet_exporters():
        fp32 = export_onnx(model, volume[..., :args.roi, :args.roi, :args.roi].repeat(
            2, 1, 1, 1, 1), folder / "m3d.onnx")
        int8 = quantize_onnx_int8(fp32, folder / "m3d_int8.onnx", calibration)
    runners = {"eager": _eager(model, False), "eager bf16": _eager(model, True),
               "ORT fp32": load_onnx(fp32, num_threads=args.threads),
               "ORT int8": load_onnx(int8, num_threads=args.threads)}
    if openvino_available():
        runners.update({
            "OpenVINO fp32": load_onnx(fp32, runtime="openvino", num_threads=args.threads),
            "OpenVINO bf16": load_onnx(fp32, runtime="openvino", precision="bf16",
                                       num_threads=args.threads),
            "OpenVINO int8": load_onnx(int8, runtime="openvino", num_threads=args.threads)})
    windows = SlidingWindowInferer(roi, batch_size=4)
    logits = {name: windows(run, volume) for name, run in runners.items()}  # warm-up
    times: dict[str, list[float]] = {name: [] for name in runners}
    for _ in range(args.volume_repeats):
        for name, run in runners.items():
            start = time.perf_counter()
            windows(run, volume)
            times[name].append(time.perf_counter() - start)
    rows = []
    for name in runners:
        rows.append({"variant": name, "latency_s": statistics.median(times[name]),
                     "agreement": float((logits[name].argmax(1) == logits["eager"].argmax(1))
                                        .float().mean()),
                     "max_abs_diff": float((logits[name] - logits["eager"]).abs().max())})
    for row in rows:
        row["speedup"] = rows[0]["latency_s"] / row["latency_s"]
    return rows, tuple(volume.shape)


def _eager(model, bf16: bool):
    def run(x: torch.Tensor) -> torch.Tensor:  # no_grad: MONAI's blending writes in place
        with torch.no_grad(), torch.autocast("cpu", torch.bfloat16, enabled=bf16):
            return model(x).float()
    return run


def profiles(trained, variants: dict, args: argparse.Namespace) -> None:
    from medseg_helpers.deploy.profiling import (
        onnxruntime_profile,
        optimized_operators,
        torch_profile,
    )

    image, _ = trained.preprocessed(trained.split.test[0])
    batch = image.transpose(0, 1)[:16].float().contiguous()
    runs = 3 if args.quick else 20
    tables = {"eager": torch_profile(trained.model, batch, runs=runs)}
    for name in ("ORT fp32", "ORT int8 s8, transposed conv", "ORT int8"):
        tables[name] = onnxruntime_profile(variants[name], batch, runs=runs,
                                           num_threads=args.threads)
        print(f"\n{name}, graph after optimisation: "
              f"{dict(optimized_operators(variants[name]).most_common())}")
    for name, table in tables.items():
        print(f"\n{name}: operator time per batch of 16 slices "
              f"({table['ms_per_run'].sum():.1f} ms summed)")
        print(markdown_table(table.head(8)))


def main() -> None:
    from medseg_helpers.course.model import (
        course_model_config,
        ensure_trained_model,
        load_trained_model,
    )
    from medseg_helpers.deploy.variants import variant_table
    from medseg_helpers.device import cpu_description

    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--profile", default=None, help="course model of this profile")
    parser.add_argument("--run-dir", default=None, help="a finished training run instead")
    parser.add_argument("--threads", type=int, default=min(2, os.cpu_count() or 1))
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--prune", type=float, default=0.5)
    parser.add_argument("--fine-tune-steps", type=int, default=60)
    parser.add_argument("--volume", type=int, default=128, help="3D table: volume side")
    parser.add_argument("--roi", type=int, default=64, help="3D table: window side")
    parser.add_argument("--volume-repeats", type=int, default=3)
    parser.add_argument("--no-compile", dest="compile", action="store_false")
    parser.add_argument("--quick", action="store_true", help="smoke profile, few repetitions")
    args = parser.parse_args()
    if args.quick:
        args.profile, args.repeats, args.fine_tune_steps = args.profile or "smoke", 2, 2
        args.volume, args.roi, args.volume_repeats, args.compile = 64, 32, 1, False
    torch.set_num_threads(args.threads)
    trained = (load_trained_model(args.run_dir, device="cpu") if args.run_dir else
               ensure_trained_model(course_model_config(args.profile), device="cpu"))
    cpu = cpu_description()
    with tempfile.TemporaryDirectory(prefix="bench-inference-") as tmp:
        os.environ.setdefault("XDG_CACHE_HOME", str(Path(tmp) / "cache"))
        start = time.perf_counter()
        variants = build_variants(trained, Path(tmp), args)
        table = variant_table(trained, variants, repeats=args.repeats, num_threads=args.threads)
        seconds = time.perf_counter() - start
        image, _ = trained.preprocessed(trained.split.test[0])
        print(f"torch {torch.__version__}, {args.threads} threads, {cpu['model']} "
              f"({', '.join(cpu['features'])}), load average {os.getloadavg()[0]:.1f}; model "
              f"{trained.run_dir.name}; {len(trained.split.test)} test patients, volume "
              f"(C, D, H, W) = {tuple(image.shape)}; {seconds:.0f} s")
        print()
        columns = ["file_mb", "latency_ms", "speedup", "dice", "dice_drop", "agreement",
                   "max_abs_diff"]
        print(markdown_table(table[columns]))
        rows, shape = volume_table(trained, Path(tmp), args)
        print(f"\n3D U-Net (width 8, depth 3, untrained), volume {shape}, windows of "
              f"{args.roi}^3, 4 per call, median of {args.volume_repeats}:")
        print("\n| variant | latency s | speed-up | agreement | max abs diff |")
        print("|---|---:|---:|---:|---:|")
        for row in rows:
            print(f"| {row['variant']} | {row['latency_s']:.2f} | {row['speedup']:.2f} | "
                  f"{row['agreement']:.4f} | {row['max_abs_diff']:.3g} |")
        profiles(trained, variants, args)


def markdown_table(table) -> str:
    """A DataFrame as a Markdown table (pandas' ``to_markdown`` needs ``tabulate``)."""
    columns = [table.index.name or "", *table.columns]
    lines = ["| " + " | ".join(columns) + " |", "|---" + "|---:" * len(table.columns) + "|"]
    for name, row in table.iterrows():
        lines.append("| " + " | ".join([str(name), *(f"{v:.4g}" for v in row)]) + " |")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
