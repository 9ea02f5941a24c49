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

With ``--run-dir RUN`` (a trained course run, e.g. ``runs/train-full-unet-2d``), the
throughput table compares two exports of that model at ``--clients`` (default 1 2 4):
``fp32`` (``medseg export --format onnx``: ONNX Runtime, float32) and ``best`` (``medseg
export --format best``: the variant it measured fastest within 0.01 Dice, served in the
runtime its ``model.deploy.json`` names), each posting the run's first test scan
(``.nii.gz``, as a client would).

A second table (``--memory``, on by default) measures the server's peak resident memory
(``VmHWM`` of the child, reset between rows through ``/proc/<pid>/clear_refs``, Linux only)
with the voxel budget ``--max-voxels``: idle; one request with the largest accepted
volume (a cube of ``max_voxels``); ``--concurrent`` clients at once posting it (the service decodes
and segments at most ``--max-concurrency`` at a time); and a hostile upload that is small
on the wire but declares far more voxels than the budget (answered 422 from its header).
Each row's growth (peak during it minus the resident memory before it), divided by the
budget, is the memory a deployment needs per running request and voxel; the README quotes
it. The service waits up to 600 s for a slot here (``--queue-timeout-s``), so every
concurrent request is served rather than answered 503.
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
    from medseg_helpers.deploy.trained_export import quiet_exporters
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


def _cube_payload(voxels: int) -> tuple[bytes, tuple[int, int, int]]:
    """A ``.nii.gz`` int16 cube of at most ``voxels`` voxels (MR-like noise): the largest
    volume the budget accepts, small on the wire."""
    import nibabel as nib

    side = int(round(voxels ** (1 / 3)))
    while side**3 > voxels:
        side -= 1
    rng = np.random.default_rng(1)
    image = rng.normal(100, 20, size=(side, side, side)).astype(np.int16)
    return gzip.compress(nib.Nifti1Image(image, np.diag([1.0, 1.0, 1.0, 1.0])).to_bytes(),
                         compresslevel=1), (side, side, side)


def _declared_bomb(shape_xyz: tuple[int, int, int]) -> bytes:
    """A NIfTI whose header declares ``shape_xyz`` float32 voxels, with no voxel data."""
    import nibabel as nib

    header = nib.Nifti1Header()
    header.set_data_shape(shape_xyz)
    header.set_data_dtype(np.float32)
    header.set_qform(np.eye(4), code=1)
    header.set_sform(np.eye(4), code=1)
    return gzip.compress(header.binaryblock + b"\0" * 4)


def _rss_mib(pid: int, field: str = "VmHWM") -> float:
    """``VmHWM`` (peak) or ``VmRSS`` of ``pid`` in MiB, from ``/proc/<pid>/status``."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(f"{field}:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"no {field} for pid {pid}")


def _reset_peak(pid: int) -> None:
    """Start a new peak-RSS window (Linux >= 4.0: writing 5 to ``clear_refs``)."""
    Path(f"/proc/{pid}/clear_refs").write_text("5")


def memory_rows(url: str, pid: int, args: argparse.Namespace) -> list[dict[str, object]]:
    """Peak RSS of the server for the memory table (see the module docstring)."""
    import httpx

    cube, shape = _cube_payload(args.max_voxels)
    bomb_shape = (2048, 2048, max(4, 4 * args.max_voxels // 2048**2 + 4))
    cases = [("idle", None, 0), (f"largest accepted {shape}", cube, 1),
             (f"largest accepted, {args.concurrent} clients", cube, args.concurrent),
             (f"hostile header {bomb_shape}", _declared_bomb(bomb_shape), 1)]
    def post(body: bytes) -> int:
        with httpx.Client(base_url=url, timeout=600) as http:
            return http.post("/v1/segment", files={"file": ("x", body)}).status_code

    rows = []
    for name, payload, clients in cases:
        _reset_peak(pid)
        before = _rss_mib(pid, "VmRSS")
        start = time.perf_counter()
        statuses: list[int] = []
        if payload is not None:
            with ThreadPoolExecutor(clients) as pool:
                statuses = list(pool.map(post, [payload] * clients))
        rows.append({"case": name, "upload_mib": len(payload or b"") / 2**20,
                     "statuses": ",".join(map(str, sorted(statuses))) or "-",
                     "seconds": time.perf_counter() - start, "before_mib": before,
                     "peak_mib": _rss_mib(pid)})
    return rows


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


def compare_exports(args: argparse.Namespace, folder: Path) -> None:
    """The ``--run-dir`` table: fp32 ONNX against the ``--format best`` export."""
    import contextlib
    import io

    from medseg_helpers.cli import main as medseg
    from medseg_helpers.course.model import load_trained_model
    from medseg_helpers.deploy.service_process import BackgroundService

    trained = load_trained_model(args.run_dir, device="cpu")
    scan = trained.cases[trained.split.test[0]].image_path
    payload = scan.read_bytes()
    rows = []
    for name in ("fp32", "best"):
        out = folder / name / "model.onnx"
        with contextlib.redirect_stdout(io.StringIO()):
            medseg(["export", str(args.run_dir), "--format", "onnx" if name == "fp32" else name,
                    "--out", str(out)])
        with BackgroundService(out, num_classes=trained.num_classes, log_dir=folder,
                               env={"XDG_CACHE_HOME": str(folder / "cache")},
                               extra_args=["--max-concurrency", str(args.max_concurrency),
                                           "--queue-timeout-s", "600"]) as service:
            import httpx

            runtime = httpx.get(f"{service.url}/health").json()["runtime"]
            measure(service.url, payload, 1, 1.0)  # warm-up
            rows += [{"export": f"{name} ({runtime})", **measure(service.url, payload, n,
                                                                   args.seconds)}
                     for n in args.clients]
    base = {row["clients"]: row["rps"] for row in rows if row["export"].startswith("fp32")}
    print(f"medseg serve on 127.0.0.1, {trained.run_dir.name}, max_concurrency="
          f"{args.max_concurrency}, scan {scan.name} ({len(payload) / 2**20:.2f} MB), "
          f"{os.cpu_count()} cores, load average {os.getloadavg()[0]:.1f}")
    print("\n| export | clients | requests | 200 OK | requests/s | x fp32 | p50 ms | p95 ms |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|")
    for row in rows:
        print(f"| {row['export']} | {row['clients']} | {row['requests']} | {row['ok']} | "
              f"{row['rps']:.2f} | {row['rps'] / base[row['clients']]:.2f} | "
              f"{row['p50_ms']:.0f} | {row['p95_ms']:.0f} |")


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
    parser.add_argument("--run-dir", default=None,
                        help="a trained run: compare its fp32 and --format best exports")
    parser.add_argument("--num-classes", type=int, default=3)
    parser.add_argument("--max-voxels", type=int, default=128**3,
                        help="the service's voxel budget for the memory table")
    parser.add_argument("--concurrent", type=int, default=4,
                        help="clients posting the largest volume at once (memory table)")
    parser.add_argument("--no-memory", dest="memory", action="store_false",
                        help="skip the memory table")
    args = parser.parse_args()
    if args.quick:
        args.clients, args.seconds, args.size, args.slices = [1, 4], 2.0, 64, 8
        args.max_voxels, args.concurrent = 32**3, 2
    if args.run_dir:
        if args.clients == [1, 2, 4, 8]:
            args.clients = [1, 2, 4]
        with tempfile.TemporaryDirectory(prefix="bench-service-") as tmp:
            compare_exports(args, Path(tmp))
        return
    with tempfile.TemporaryDirectory(prefix="bench-service-") as tmp:
        env = {"XDG_CACHE_HOME": str(Path(tmp) / "cache")}
        model_path, num_classes = _model(Path(tmp), args)
        payload = _payload(args)
        with BackgroundService(model_path, num_classes=num_classes, log_dir=tmp, env=env,
                               extra_args=["--max-concurrency", str(args.max_concurrency),
                                           "--max-voxels", str(args.max_voxels),
                                           "--queue-timeout-s", "600"]
                               ) as service:
            measure(service.url, payload, 1, 1.0)  # warm-up
            rows = [measure(service.url, payload, n, args.seconds) for n in args.clients]
            memory = memory_rows(service.url, service.process.pid, args) if args.memory else []
    print(f"medseg serve on 127.0.0.1, {model_path.name}, max_concurrency="
          f"{args.max_concurrency}, volume {args.size}x{args.size}x{args.slices} float32 "
          f"({len(payload) / 2**20:.1f} MB .nii.gz), {os.cpu_count()} cores, load average "
          f"{os.getloadavg()[0]:.1f}")
    print("\n| clients | requests | 200 OK | requests/s | slices/s | p50 ms | p95 ms |")
    print("|---:|---:|---:|---:|---:|---:|---:|")
    for row in rows:
        print(f"| {row['clients']} | {row['requests']} | {row['ok']} | {row['rps']:.2f} | "
              f"{row['rps'] * args.slices:.0f} | {row['p50_ms']:.0f} | {row['p95_ms']:.0f} |")
    if not memory:
        return
    print(f"\nPeak RSS of the server, --max-voxels {args.max_voxels} "
          f"(a {args.max_voxels * 4 / 2**20:.0f} MiB float32 volume), --max-concurrency "
          f"{args.max_concurrency}; growth = peak during the row minus RSS before it")
    print("\n| request | upload MiB | statuses | seconds | RSS before MiB | peak RSS MiB | "
          "growth MiB | growth bytes per budget voxel |")
    print("|---|---:|---|---:|---:|---:|---:|---:|")
    for row in memory:
        growth = row["peak_mib"] - row["before_mib"]
        print(f"| {row['case']} | {row['upload_mib']:.2f} | {row['statuses']} | "
              f"{row['seconds']:.1f} | {row['before_mib']:.0f} | {row['peak_mib']:.0f} | "
              f"{growth:.0f} | {growth * 2**20 / args.max_voxels:.0f} |")


if __name__ == "__main__":
    main()
