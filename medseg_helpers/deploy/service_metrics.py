"""Counters of the segmentation service, rendered for Prometheus (``GET /metrics``).

Requests by path and status (every answer, 4xx and 5xx included), a latency histogram of
``/v1/segment`` (seconds), for drift monitoring the mean and standard deviation of each
input's raw intensities, and the process's resources under Prometheus's standard names
(`process_metrics`: resident and peak memory, CPU seconds, threads). `histogram_quantile`
reads a latency percentile back from the histogram, as Prometheus's function of that
name does.
"""

from __future__ import annotations

import math
import os
import resource
import sys
import threading
from collections.abc import Sequence

#: Upper bounds (s) of the ``/v1/segment`` latency histogram buckets.
LATENCY_BUCKETS_S = (0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
_KNOWN_PATHS = ("/v1/segment", "/health", "/metrics")  # any other path counts as "other"


def process_metrics() -> dict[str, float]:
    """This process's resources now: ``process_resident_memory_bytes`` (RSS),
    ``process_resident_memory_max_bytes`` (peak RSS), ``process_cpu_seconds_total``
    (user + system, all threads) and ``process_threads``.

    On Linux from ``/proc/self/status`` (``VmRSS``, ``VmHWM``, ``Threads``): ``getrusage``'s
    peak would be wrong for a server started from a big parent, because Linux keeps
    ``ru_maxrss`` across ``fork`` and ``exec``. Elsewhere RSS and peak are ``ru_maxrss``
    and threads the Python threads.
    """
    times = os.times()
    cpu = times.user + times.system
    try:
        with open("/proc/self/status", encoding="ascii") as status:
            fields = dict(line.split(":", 1) for line in status if ":" in line)
        rss = float(fields["VmRSS"].split()[0]) * 1024
        peak = float(fields["VmHWM"].split()[0]) * 1024
        threads = float(fields["Threads"].split()[0])
    except (OSError, KeyError, ValueError):
        maxrss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # bytes on macOS, else KiB
        rss = peak = float(maxrss if sys.platform == "darwin" else maxrss * 1024)
        threads = float(threading.active_count())
    return {"process_resident_memory_bytes": rss, "process_resident_memory_max_bytes": peak,
            "process_cpu_seconds_total": cpu, "process_threads": threads}


def histogram_quantile(q: float, bounds: Sequence[float], cumulative: Sequence[float]
                       ) -> float:
    """The ``q`` quantile of a Prometheus histogram, interpolated linearly inside the bucket
    that holds it (as PromQL's ``histogram_quantile``; the first bucket starts at 0).

    Args:
        q: in ``[0, 1]``, e.g. 0.95.
        bounds: finite upper bounds ``le`` of the buckets, increasing.
        cumulative: observations ``<= bound`` for each bound, then the total count (the
            ``+Inf`` bucket): ``len(bounds) + 1`` numbers.

    Returns:
        The estimate; NaN without observations; the largest finite bound when the
        quantile falls in the ``+Inf`` bucket (nothing is known above it).

    Raises:
        ValueError: ``q`` outside ``[0, 1]`` or lengths that do not match.
    """
    if not 0 <= q <= 1:
        raise ValueError(f"q must be in [0, 1], got {q}")
    if len(cumulative) != len(bounds) + 1:
        raise ValueError("cumulative needs one count per bound plus the +Inf count")
    total = cumulative[-1]
    if total == 0:
        return math.nan
    rank = q * total
    lower, below = 0.0, 0.0
    for bound, count in zip(bounds, cumulative, strict=False):
        if count >= rank:
            in_bucket = count - below
            return lower + (bound - lower) * ((rank - below) / in_bucket if in_bucket else 1.0)
        lower, below = bound, count
    return float(bounds[-1])


class ServiceMetrics:
    """Thread-safe counters rendered in the Prometheus text exposition format."""

    def __init__(self, buckets: Sequence[float] = LATENCY_BUCKETS_S) -> None:
        self._lock = threading.Lock()
        self.buckets = tuple(buckets)
        self.requests: dict[tuple[str, int], int] = {}
        self.bucket_counts = [0] * len(self.buckets)
        self.latency_sum, self.latency_count = 0.0, 0
        self.intensity = {"mean": [0.0, 0, 0.0], "std": [0.0, 0, 0.0]}  # sum, count, last

    def observe_request(self, path: str, status: int) -> None:
        """Count one answered request (paths other than the service's count as "other")."""
        path = path if path in _KNOWN_PATHS else "other"
        with self._lock:
            self.requests[(path, status)] = self.requests.get((path, status), 0) + 1

    def observe_latency(self, seconds: float) -> None:
        """Add one ``/v1/segment`` answer time (s) to the histogram."""
        with self._lock:
            self.latency_sum += seconds
            self.latency_count += 1
            for i, bound in enumerate(self.buckets):
                if seconds <= bound:
                    self.bucket_counts[i] += 1

    def observe_intensity(self, mean: float, std: float) -> None:
        """Record the mean and standard deviation of one input's raw intensities; a pair
        that is not finite is ignored (it would turn the sums into NaN for good)."""
        if not (math.isfinite(mean) and math.isfinite(std)):
            return
        with self._lock:
            for name, value in (("mean", mean), ("std", std)):
                entry = self.intensity[name]
                entry[0] += value
                entry[1] += 1
                entry[2] = value

    def render(self) -> str:
        """The metrics as Prometheus text (version 0.0.4)."""
        with self._lock:
            lines = ["# HELP medseg_requests_total HTTP requests by path and status.",
                     "# TYPE medseg_requests_total counter"]
            for (path, status), count in sorted(self.requests.items()):
                lines.append(f'medseg_requests_total{{path="{path}",status="{status}"}} {count}')
            lines += ["# HELP medseg_segment_latency_seconds /v1/segment answer time (any status).",
                      "# TYPE medseg_segment_latency_seconds histogram"]
            for bound, count in zip(self.buckets, self.bucket_counts, strict=True):
                lines.append(f'medseg_segment_latency_seconds_bucket{{le="{bound}"}} {count}')
            lines += [f'medseg_segment_latency_seconds_bucket{{le="+Inf"}} {self.latency_count}',
                      f"medseg_segment_latency_seconds_sum {self.latency_sum}",
                      f"medseg_segment_latency_seconds_count {self.latency_count}"]
            for name, (total, count, last) in self.intensity.items():
                metric = f"medseg_input_intensity_{name}"
                lines += [f"# HELP {metric} Per-request {name} of raw input intensities.",
                          f"# TYPE {metric} summary", f"{metric}_sum {total}",
                          f"{metric}_count {count}",
                          f"# TYPE {metric}_last gauge", f"{metric}_last {last}"]
        for metric, value in process_metrics().items():
            kind = "counter" if metric.endswith("_total") else "gauge"
            lines += [f"# TYPE {metric} {kind}", f"{metric} {value}"]
        return "\n".join(lines) + "\n"
