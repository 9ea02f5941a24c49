"""Training-step time and peak memory: our from-scratch U-Net against MONAI's, on CPU.

Run: ``.venv/bin/python benchmarks/bench_unet.py`` (about 1-2 minutes on 2 cores), or
``--quick`` for a smoke run. Prints a Markdown table; ratios are ours / MONAI measured in the
same run, because absolute numbers vary by ±20 % between runs and machines.

What is compared (issue 5), one forward + backward + Adam step on random data:

- 2D: batch of 4 images 1x256x256, 2 classes; 3D: one volume 1x64x64x64, 2 classes.
- ``ours``: ``UNet(base_channels=16, depth=4, norm="instance")``, widths 16..256, the norm
  MONAI uses by default; ``ours_bn`` the same with our default batch norm.
- ``monai_unet``: ``monai.networks.nets.UNet`` with the *same widths* (16..256, strides 2,
  2 residual units). It has 16 % fewer parameters but ~4x (2D) to ~10x (3D) fewer FLOPs:
  its first layer is already strided, so nothing runs at full resolution except the last
  up-sampling. A classic U-Net pays for its full-resolution block in time and memory.
- ``monai_basic_unet``: ``BasicUNet`` (16, 32, 64, 128, 256, 16), MONAI's classic U-Net
  layout (pooling, two convs per level, transposed convs, concatenated skips): the
  architecture-matched reference: parameters within 1 %, FLOPs within ~12 % of ours.
- ``monai_unet_x2`` (2D only): MONAI's UNet at widths 32..512, which matches our FLOPs (not
  our parameters): time per FLOP of the two implementations.

Step times on a shared machine are noisy: with 2 threads on 2 cores, a neighbour using one
core can slow OpenMP steps several-fold. The header prints the load average; rerun when it
is high, or pin ``--threads 1`` for steadier ratios.

Peak memory: each model runs in a fresh subprocess, and we report the growth of the
process's peak resident set size (``resource.getrusage(RUSAGE_SELF).ru_maxrss``) from just
after building the model, optimiser and batch to the end of the steps. That captures
activations, gradients, optimiser state and allocator/oneDNN workspace, which is what
limits batch size. ``tracemalloc`` cannot see torch's C++ allocations, and
``torch.profiler(profile_memory=True)`` reports allocations per operator rather than a
process peak; a fresh process per model also keeps one model's freed-but-cached memory from
hiding the next one's.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

CASES = {
    "2d": {"dims": 2, "batch": 4, "size": (256, 256)},
    "3d": {"dims": 3, "batch": 1, "size": (64, 64, 64)},
}
MODELS = {
    "2d": ["ours", "ours_bn", "monai_unet", "monai_basic_unet", "monai_unet_x2"],
    "3d": ["ours", "ours_bn", "monai_unet", "monai_basic_unet"],
}
REFERENCES = {
    "monai_unet": "same widths",
    "monai_basic_unet": "same layout",
    "monai_unet_x2": "2x widths",
}


def build(name: str, dims: int):
    """The benchmarked models, all with 1 input channel and 2 output classes."""
    if name.startswith("ours"):
        sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
        from medseg_helpers.networks import UNet

        norm = "batch" if name == "ours_bn" else "instance"
        return UNet(dims, 1, 2, base_channels=16, depth=4, norm=norm)
    from monai.networks import nets

    if name == "monai_basic_unet":
        return nets.BasicUNet(dims, 1, 2, features=(16, 32, 64, 128, 256, 16))
    widths = (32, 64, 128, 256, 512) if name == "monai_unet_x2" else (16, 32, 64, 128, 256)
    return nets.UNet(dims, 1, 2, channels=widths, strides=(2, 2, 2, 2), num_res_units=2)


def _maxrss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB


def worker(name: str, case: str, steps: int, threads: int) -> dict:
    """Time ``steps`` training steps of one model in this (fresh) process."""
    import torch
    import torch.nn.functional as F
    from torch.utils.flop_counter import FlopCounterMode

    torch.set_num_threads(threads)
    torch.manual_seed(0)
    spec = CASES[case]
    model = build(name, spec["dims"])
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-4)
    image = torch.randn(spec["batch"], 1, *spec["size"])
    label = torch.randint(0, 2, (spec["batch"], *spec["size"]))

    def step() -> None:
        optimizer.zero_grad(set_to_none=True)
        F.cross_entropy(model(image), label).backward()
        optimizer.step()

    base = _maxrss_mib()
    step()  # warm-up: oneDNN picks kernels, allocations reach steady state
    times = []
    for _ in range(steps):
        start = time.perf_counter()
        step()
        times.append(time.perf_counter() - start)
    peak = _maxrss_mib() - base
    with FlopCounterMode(display=False) as counter:
        F.cross_entropy(model(image), label).backward()
    return {
        "model": name,
        "case": case,
        "step_s": statistics.median(times),
        "peak_mib": peak,
        "params": sum(p.numel() for p in model.parameters()),
        "gflops": counter.get_total_flops() / 1e9,
        "threads": torch.get_num_threads(),
    }


def run_worker(name: str, case: str, steps: int, threads: int) -> dict:
    out = subprocess.run(
        [
            sys.executable,
            __file__,
            "--worker",
            name,
            case,
            "--steps",
            str(steps),
            "--threads",
            str(threads),
        ],
        check=True,
        capture_output=True,
        text=True,
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="2D only, 1 timed step")
    parser.add_argument(
        "--rounds",
        type=int,
        default=1,
        help="interleaved rounds per model (median of round medians)",
    )
    parser.add_argument(
        "--steps", type=int, default=0, help="timed steps per round (default 3 in 2D, 2 in 3D)"
    )
    parser.add_argument(
        "--threads",
        type=int,
        default=len(os.sched_getaffinity(0)),
        help="torch threads (default: the CPUs this process may use)",
    )
    parser.add_argument("--worker", nargs=2, metavar=("MODEL", "CASE"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        print(json.dumps(worker(*args.worker, steps=args.steps or 3, threads=args.threads)))
        return
    cases = ["2d"] if args.quick else list(CASES)
    load_before = os.getloadavg()[0]
    results: dict[tuple[str, str], list[dict]] = {}
    started = time.perf_counter()
    for case in cases:
        steps = args.steps or (1 if args.quick else 3 if case == "2d" else 2)
        for _ in range(args.rounds):  # interleave models so that load changes hit all of them
            for name in MODELS[case]:
                results.setdefault((name, case), []).append(
                    run_worker(name, case, steps, args.threads)
                )
    header = (
        f"CPU, {args.threads} torch threads, load average {load_before:.1f} before / "
        f"{os.getloadavg()[0]:.1f} after; step = forward + backward + Adam, median of "
        f"steps; wall time {time.perf_counter() - started:.0f} s"
    )
    print(report(results, cases, header))


def report(results: dict[tuple[str, str], list[dict]], cases: list[str], header: str) -> str:
    """A Markdown table; ratios are ``ours`` (instance norm) over each MONAI model."""
    lines = [
        header,
        "",
        "| case | model | params | GFLOP/step | step (s) | peak mem (MiB) "
        "| ours_in / model: time | memory | FLOPs |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for case in cases:
        med = {
            name: {
                key: statistics.median(r[key] for r in results[(name, case)])
                for key in ("step_s", "peak_mib", "gflops", "params")
            }
            for name in MODELS[case]
        }
        ours = med["ours"]
        for name in MODELS[case]:
            m = med[name]
            ratio = (
                ""
                if name.startswith("ours")
                else (
                    f"{ours['step_s'] / m['step_s']:.2f}x ({REFERENCES[name]}) "
                    f"| {ours['peak_mib'] / max(m['peak_mib'], 1):.2f}x "
                    f"| {ours['gflops'] / m['gflops']:.2f}x"
                )
            )
            lines.append(
                f"| {case} | {name} | {m['params'] / 1e6:.2f} M | {m['gflops']:.1f} "
                f"| {m['step_s']:.3f} | {m['peak_mib']:.0f} | {ratio or ' | | '} |"
            )
    return "\n".join(lines)


if __name__ == "__main__":
    main()
