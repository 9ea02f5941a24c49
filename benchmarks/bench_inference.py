"""Inference latency per deployment variant, and the service's throughput on loopback.

Run: ``.venv/bin/python benchmarks/bench_inference.py`` (about 1 minute on 2 cores), or
``--quick`` for a smoke run. Prints two Markdown tables; latencies are also given as ratios
to eager PyTorch measured in the same run (absolute numbers vary ±20 % between runs).

Variants, all on one CPU batch ``(1, 1, 256, 256)`` of a from-scratch ``UNet(2D,
base_channels=16, depth=4)`` with untrained weights (``--norm batch`` by default: batch norm
folds into the convs; ``--norm instance`` is the MONAI-like design MEASURED.md timed):

- ``eager``: ``model(x)`` under ``torch.inference_mode`` (the baseline).
- ``torchscript``: traced and frozen (legacy; deprecation warnings silenced here only).
  Every variant gets 10 warm-up calls (TorchScript's profiling executor optimises late).
- ``torch.export``: ``torch.export.load(...).module()`` of the saved ``.pt2``.
- ``ort fp32``: ONNX Runtime on the ``export_onnx`` file.
- ``ort int8``: static QDQ int8 calibrated on 16 synthetic images (smooth discs).

``agree`` is the fraction of pixels whose argmax equals eager's on the timed input (random
weights: int8 agreement is only indicative; the course measures Dice on trained models).

Service: a real uvicorn server on 127.0.0.1 with `medseg_helpers.serve.create_app`;
``--clients`` threads post a ``(X, Y, Z) = (128, 128, 16)`` NIfTI for ``--seconds``.
"""

from __future__ import annotations

import argparse
import gzip
import os
import socket
import statistics
import tempfile
import threading
import time
import warnings
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import torch

from medseg_helpers.export import (
    OnnxSegmenter,
    export_onnx,
    export_program,
    export_torchscript,
    quantize_onnx_int8,
)
from medseg_helpers.models.unet import UNet


def _median_ms(fn, x, reps: int, warmup: int = 10) -> float:
    for _ in range(warmup):
        fn(x)
    times = []
    for _ in range(reps):
        start = time.perf_counter()
        fn(x)
        times.append(time.perf_counter() - start)
    return 1000 * statistics.median(times)


def _calibration(count: int, size: int, seed: int = 0) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:size, :size] / size
    out = []
    for _ in range(count):
        cy, cx, r = rng.uniform(0.3, 0.7), rng.uniform(0.3, 0.7), rng.uniform(0.1, 0.25)
        image = 1 / (1 + np.exp(((yy - cy) ** 2 + (xx - cx) ** 2 - r**2) * 200)) + 0.3 * xx
        image = image + 0.05 * rng.normal(size=image.shape)
        out.append(((image - image.mean()) / image.std())[None].astype(np.float32))
    return out


def bench_variants(folder: Path, args: argparse.Namespace) -> list[tuple]:
    torch.manual_seed(0)
    model = UNet(2, 1, 3, base_channels=16, depth=4, norm=args.norm).eval()
    x = torch.from_numpy(_calibration(1, args.size, seed=99)[0][None])
    with torch.inference_mode():
        ref = model(x)
    paths = {"onnx": export_onnx(model, x, folder / "m.onnx"),
             "pt2": export_program(model, x, folder / "m.pt2")}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # TorchScript's deprecation/tracer warnings
        paths["ts"] = export_torchscript(model, x, folder / "m.pt")
        scripted = torch.jit.load(str(paths["ts"]))
    paths["int8"] = quantize_onnx_int8(paths["onnx"], folder / "m_int8.onnx",
                                       _calibration(16, args.size))
    program = torch.export.load(str(paths["pt2"])).module()
    fp32 = OnnxSegmenter(paths["onnx"], num_threads=args.threads)
    int8 = OnnxSegmenter(paths["int8"], num_threads=args.threads)

    def torch_fn(module):
        def run(t):
            with torch.inference_mode():
                return module(t)
        return run

    variants = [("eager", torch_fn(model), None, x),
                ("torchscript", torch_fn(scripted), paths["ts"], x),
                ("torch.export", torch_fn(program), paths["pt2"], x),
                ("ort fp32", fp32.predict_logits, paths["onnx"], x.numpy()),
                ("ort int8", int8.predict_logits, paths["int8"], x.numpy())]
    rows = []
    for name, fn, path, inp in variants:
        ms = _median_ms(fn, inp, args.reps)
        out = torch.as_tensor(np.asarray(fn(inp)))
        agree = float((out.argmax(1) == ref.argmax(1)).float().mean())
        diff = float((out - ref).abs().max())
        size_mb = path.stat().st_size / 2**20 if path else float("nan")
        rows.append((name, ms, size_mb, diff, agree))
    return rows


def bench_service(folder: Path, args: argparse.Namespace) -> dict[str, float]:
    import httpx
    import nibabel as nib
    import uvicorn

    from medseg_helpers.serve import create_app

    app = create_app(folder / "m.onnx", num_classes=3, max_concurrency=args.threads,
                     num_threads=1, max_upload_bytes=64 * 2**20)
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    url = f"http://127.0.0.1:{sock.getsockname()[1]}/v1/segment"
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not server.started and time.monotonic() < deadline:
        time.sleep(0.05)
    image = np.random.default_rng(0).normal(100, 20, size=(128, 128, 16)).astype(np.float32)
    payload = gzip.compress(nib.Nifti1Image(image, np.eye(4)).to_bytes())
    latencies: list[float] = []
    statuses: list[int] = []
    stop = time.monotonic() + args.seconds

    def client() -> None:
        with httpx.Client(timeout=60) as http:
            while time.monotonic() < stop:
                start = time.perf_counter()
                response = http.post(url, files={"file": ("scan.nii.gz", payload)})
                latencies.append(time.perf_counter() - start)
                statuses.append(response.status_code)

    try:
        start = time.monotonic()
        with ThreadPoolExecutor(args.clients) as pool:
            for future in [pool.submit(client) for _ in range(args.clients)]:
                future.result()
        elapsed = time.monotonic() - start
    finally:
        server.should_exit = True
        thread.join(timeout=10)
        sock.close()
    ok = sum(status == 200 for status in statuses)
    return {"requests": len(statuses), "ok": ok, "rps": ok / elapsed,
            "slices_per_s": ok * image.shape[2] / elapsed,
            "p50_ms": 1000 * statistics.median(latencies),
            "p95_ms": 1000 * float(np.percentile(latencies, 95))}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="few repetitions (smoke run)")
    parser.add_argument("--threads", type=int, default=min(2, os.cpu_count() or 1))
    parser.add_argument("--norm", default="batch", choices=["batch", "instance"])
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--reps", type=int, default=30)
    parser.add_argument("--seconds", type=float, default=6.0)
    parser.add_argument("--clients", type=int, default=4)
    args = parser.parse_args()
    if args.quick:
        args.reps, args.seconds, args.size = 5, 2.0, 128
    torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory(prefix="bench-inference-") as tmp:
        os.environ.setdefault("XDG_CACHE_HOME", str(Path(tmp) / "cache"))
        rows = bench_variants(Path(tmp), args)
        service = bench_service(Path(tmp), args)
    eager_ms = rows[0][1]
    print(f"torch {torch.__version__}, {args.threads} threads, load average "
          f"{os.getloadavg()[0]:.2f}, UNet 2D norm={args.norm}, input 1x1x{args.size}x{args.size}")
    print("\n| variant | median ms | speed-up vs eager | file MB | max abs diff | argmax agree |")
    print("|---|---:|---:|---:|---:|---:|")
    for name, ms, size_mb, diff, agree in rows:
        size = "-" if np.isnan(size_mb) else f"{size_mb:.2f}"
        print(f"| {name} | {ms:.1f} | {eager_ms / ms:.2f}x | {size} | {diff:.1e} | {agree:.4f} |")
    print(f"\nService on loopback: {args.clients} clients, {args.seconds:.0f} s, volume "
          "128x128x16 float32 (.nii.gz), ORT fp32 slice-wise, "
          f"max_concurrency={args.threads}, 1 ORT thread per inference")
    print("\n| requests | 200 OK | requests/s | slices/s | p50 ms | p95 ms |")
    print("|---:|---:|---:|---:|---:|---:|")
    print(f"| {service['requests']} | {service['ok']} | {service['rps']:.1f} | "
          f"{service['slices_per_s']:.0f} | {service['p50_ms']:.0f} | {service['p95_ms']:.0f} |")


if __name__ == "__main__":
    main()
