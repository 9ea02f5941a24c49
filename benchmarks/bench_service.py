"""Throughput of the real inference service on loopback: requests/s vs concurrent clients.

Run: ``.venv/bin/python benchmarks/bench_service.py`` (about a minute on 2 cores), or
``--quick``. The service is the real thing: ``medseg serve`` in a child process
(`medseg_helpers.deploy.service_process.BackgroundService`, uvicorn on 127.0.0.1, ONNX Runtime
fp32), called by ``--clients`` threads each with its own ``httpx.Client`` posting the same
``.nii.gz`` volume for ``--seconds`` per row. Latency is measured by the client (upload,
parsing, normalisation, inference, NIfTI encoding, download).

The model is an untrained course ``UNet(2D, base_channels=16, depth=4)`` (batch norm),
or ``--model PATH.onnx`` (then give ``--num-classes``); the volume is ``(X, Y, Z) =
(--size, --size, --slices)`` float32 MR-like noise (inference cost does not depend on the
content). Absolute numbers vary with the machine's load; compare rows of one run.
"""

from __future__ import annotations

import argparse
import gzip
import os
import statistics
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np


def _model(folder: Path, args: argparse.Namespace) -> tuple[Path, int]:
    if args.model:
        return Path(args.model), args.num_classes
    import torch

    from medseg_helpers.deploy.export import export_onnx
    from medseg_helpers.deploy.preprocessing import Preprocessing
    from medseg_helpers.deploy.variants import quiet_exporters
    from medseg_helpers.networks.unet import UNet

    torch.manual_seed(0)
    model = UNet(2, 1, 3, base_channels=16, depth=4).eval()
    with quiet_exporters():
        path = export_onnx(model, torch.randn(1, 1, 64, 64), folder / "model.onnx",
                           preprocessing=Preprocessing("zscore", {}, None, axis=0))
        return path, 3


def _payload(args: argparse.Namespace) -> bytes:
    import nibabel as nib

    rng = np.random.default_rng(0)
    image = rng.normal(100, 20, size=(args.size, args.size, args.slices)).astype(np.float32)
    affine = np.diag([0.8, 0.8, 2.5, 1.0])
    return gzip.compress(nib.Nifti1Image(image, affine).to_bytes())


def measure(url: str, payload: bytes, clients: int, seconds: float) -> dict[str, float]:
    """Post ``payload`` from ``clients`` threads for ``seconds``; throughput and latency."""
    import httpx

    latencies: list[float] = []
    statuses: list[int] = []
    stop = time.monotonic() + seconds

    def client() -> None:
        with httpx.Client(base_url=url, timeout=120) as http:
            while time.monotonic() < stop:
                start = time.perf_counter()
                reply = http.post("/v1/segment", files={"file": ("scan.nii.gz", payload)})
                latencies.append(time.perf_counter() - start)
                statuses.append(reply.status_code)

    start = time.monotonic()
    with ThreadPoolExecutor(clients) as pool:
        for future in [pool.submit(client) for _ in range(clients)]:
            future.result()
    elapsed = time.monotonic() - start
    ok = sum(status == 200 for status in statuses)
    return {"clients": clients, "requests": len(statuses), "ok": ok, "rps": ok / elapsed,
            "p50_ms": 1000 * statistics.median(latencies) if latencies else float("nan"),
            "p95_ms": 1000 * float(np.percentile(latencies, 95)) if latencies else float("nan")}


def main() -> None:
    from medseg_helpers.deploy.service_process import BackgroundService

    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="short rows (smoke run)")
    parser.add_argument("--clients", type=int, nargs="+", default=[1, 2, 4, 8])
    parser.add_argument("--seconds", type=float, default=8.0, help="per row")
    parser.add_argument("--size", type=int, default=128, help="in-plane voxels")
    parser.add_argument("--slices", type=int, default=16)
    parser.add_argument("--max-concurrency", type=int, default=2, help="service inference slots")
    parser.add_argument("--model", default=None, help="an exported .onnx (default: untrained)")
    parser.add_argument("--num-classes", type=int, default=3)
    args = parser.parse_args()
    if args.quick:
        args.clients, args.seconds, args.size, args.slices = [1, 4], 2.0, 64, 8
    with tempfile.TemporaryDirectory(prefix="bench-service-") as tmp:
        env = {"XDG_CACHE_HOME": str(Path(tmp) / "cache")}
        model_path, num_classes = _model(Path(tmp), args)
        payload = _payload(args)
        with BackgroundService(model_path, num_classes=num_classes, log_dir=tmp, env=env,
                               extra_args=["--max-concurrency", str(args.max_concurrency)]
                               ) as service:
            measure(service.url, payload, 1, 1.0)  # warm-up
            rows = [measure(service.url, payload, n, args.seconds) for n in args.clients]
    print(f"medseg serve on 127.0.0.1, {model_path.name}, max_concurrency="
          f"{args.max_concurrency}, volume {args.size}x{args.size}x{args.slices} float32 "
          f"({len(payload) / 2**20:.1f} MB .nii.gz), {os.cpu_count()} cores, load average "
          f"{os.getloadavg()[0]:.1f}")
    print("\n| clients | requests | 200 OK | requests/s | slices/s | p50 ms | p95 ms |")
    print("|---:|---:|---:|---:|---:|---:|---:|")
    for row in rows:
        print(f"| {row['clients']} | {row['requests']} | {row['ok']} | {row['rps']:.2f} | "
              f"{row['rps'] * args.slices:.0f} | {row['p50_ms']:.0f} | {row['p95_ms']:.0f} |")


if __name__ == "__main__":
    main()
