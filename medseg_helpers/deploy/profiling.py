"""Where inference time goes: per-operator profiles of ONNX Runtime and eager PyTorch.

Before making a model faster, measure which operators take the time, and for an int8
file, which operators still run in float:

* `onnxruntime_profile`: ONNX Runtime's own profiler (``enable_profiling``) over repeated
  runs, summed per operator type of the graph **after** its optimisations (what really
  runs: fused ``Conv``+``Relu``, ``QLinearConv`` for a quantised conv, layout
  ``Transpose``/``Reorder*`` nodes it inserted).
* `optimized_operators`: the operator counts of that optimised graph.
* `torch_profile`: ``torch.profiler`` self CPU time per ATen operator.

Each returns a table with ``share`` (of the summed operator time, not wall time: the
gaps between operators are not counted) so runtimes can be compared side by side;
`time_by_category` sums a table into the few kinds of work that explain it
(`OPERATOR_CATEGORIES`).
"""

from __future__ import annotations

import contextlib
import json
import os
import sys
import tempfile
from collections import Counter, defaultdict
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch
from torch import nn

from medseg_helpers.deploy.runtime import as_float32_array

if TYPE_CHECKING:
    import pandas as pd

PathLike = str | os.PathLike

__all__ = ["OPERATOR_CATEGORIES", "onnxruntime_profile", "optimized_operators",
           "time_by_category", "torch_profile"]

#: Operator names (ONNX Runtime's and ATen's) -> the kind of work they do. Anything else
#: counts as ``"other"``.
OPERATOR_CATEGORIES = {
    "float convolution": ("Conv", "FusedConv", "ConvTranspose", "aten::mkldnn_convolution",
                          "aten::_convolution", "aten::convolution",
                          "aten::mkldnn_convolution_transpose", "aten::conv_transpose2d",
                          "aten::_convolution_transpose"),
    "int8 convolution": ("QLinearConv",),
    "quantise / dequantise": ("QuantizeLinear", "DequantizeLinear"),
    "layout change": ("Transpose", "ReorderInput", "ReorderOutput", "DepthToSpace",
                      "aten::copy_", "aten::contiguous", "aten::to", "aten::_to_copy"),
    "normalisation, activation": ("aten::native_batch_norm", "aten::batch_norm",
                                  "aten::_batch_norm_impl_index", "aten::clamp_min_",
                                  "aten::relu_", "aten::relu", "Relu"),
    "concatenate, pool": ("Concat", "QLinearConcat", "MaxPool", "NhwcMaxPool", "aten::cat",
                          "aten::max_pool2d_with_indices", "aten::max_pool2d"),
}


def _session(path: PathLike, num_threads: int | None, **config: str):
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.log_severity_level = 3
    options.inter_op_num_threads = 1
    if num_threads is not None:
        options.intra_op_num_threads = num_threads
    for key, value in config.items():
        setattr(options, key, value)
    return ort.InferenceSession(str(path), sess_options=options,
                                providers=["CPUExecutionProvider"])


def optimized_operators(path: PathLike) -> Counter:
    """Operator counts of ``path`` after ONNX Runtime's graph optimisations (all levels,
    as an `runtime.OnnxSegmenter` session applies them), e.g. ``QLinearConv`` for each
    convolution that runs in int8, ``Conv`` for one left in float."""
    import onnx

    with tempfile.TemporaryDirectory(prefix="medseg-optimized-") as tmp:
        optimized = Path(tmp) / "optimized.onnx"
        _session(path, 1, optimized_model_filepath=str(optimized))
        return Counter(node.op_type for node in onnx.load(str(optimized)).graph.node)


def _table(times_us: dict[str, float], counts: dict[str, int], runs: int) -> pd.DataFrame:
    import pandas as pd

    total = sum(times_us.values()) or 1.0
    rows = [{"operator": op, "nodes": counts[op], "ms_per_run": us / runs / 1000,
             "share": us / total} for op, us in times_us.items()]
    return (pd.DataFrame(rows).sort_values("ms_per_run", ascending=False)
            .set_index("operator"))


def onnxruntime_profile(path: PathLike, image: np.ndarray | torch.Tensor, *,
                        runs: int = 10, num_threads: int | None = None) -> pd.DataFrame:
    """Time per operator type of an ``.onnx`` file in ONNX Runtime.

    Args:
        path: the model.
        image: one input ``(B, C, *S)``, run ``runs`` times after 2 warm-up runs.
        runs: profiled runs (their times are summed, then divided by ``runs``).
        num_threads: intra-op threads.

    Returns:
        One row per operator type (index ``operator``): ``nodes`` (in the optimised graph),
        ``ms_per_run``, ``share`` (of all operator time), slowest first.
    """
    array = as_float32_array(image)
    with tempfile.TemporaryDirectory(prefix="medseg-profile-") as tmp:
        session = _session(path, num_threads, enable_profiling=True,
                           profile_file_prefix=str(Path(tmp) / "ort"))
        feed = {session.get_inputs()[0].name: array}
        for _ in range(2 + runs):
            session.run(None, feed)
        events = json.loads(Path(session.end_profiling()).read_text())
    times: dict[str, float] = defaultdict(float)
    nodes: dict[str, set[str]] = defaultdict(set)
    per_node_runs: Counter = Counter()
    for event in events:
        if event.get("cat") == "Node" and event["name"].endswith("_kernel_time"):
            op, node = event["args"]["op_name"], event["name"]
            nodes[op].add(node)
            per_node_runs[node] += 1
            if per_node_runs[node] > 2:  # skip the warm-up runs
                times[op] += event["dur"]
    return _table(times, {op: len(names) for op, names in nodes.items()}, runs)


@contextlib.contextmanager
def _native_stderr_silenced() -> Iterator[None]:
    """Send file descriptor 2 to ``/dev/null`` for the block: torch's profiler backend
    prints two "profiler_start/stop" lines from C++ per profile, which Jupyter shows in
    the cell's output. Python exceptions are unaffected (raised after the block)."""
    sys.stderr.flush()
    saved = os.dup(2)
    try:
        with open(os.devnull, "w") as devnull:
            os.dup2(devnull.fileno(), 2)
            yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)


def torch_profile(model: nn.Module, image: torch.Tensor, *, runs: int = 10,
                  autocast_bf16: bool = False) -> pd.DataFrame:
    """Self CPU time per ATen operator of ``model(image)`` under ``torch.inference_mode``.

    Args:
        model: an eager network (put in eval mode here).
        image: ``(B, C, *S)`` float32, run ``runs`` times after 2 warm-up runs.
        runs: profiled runs.
        autocast_bf16: run under ``torch.autocast("cpu", dtype=torch.bfloat16)``.

    Returns:
        As `onnxruntime_profile`; ``nodes`` counts calls per run.
    """
    from torch.profiler import ProfilerActivity, profile

    model.eval()
    with torch.inference_mode(), torch.autocast("cpu", torch.bfloat16, enabled=autocast_bf16):
        for _ in range(2):
            model(image)
        with _native_stderr_silenced(), profile(activities=[ProfilerActivity.CPU]) as prof:
            for _ in range(runs):
                model(image)
    times = {e.key: float(e.self_cpu_time_total) for e in prof.key_averages()
             if e.self_cpu_time_total > 0}
    counts = {e.key: e.count // runs for e in prof.key_averages()}
    return _table(times, counts, runs)


def time_by_category(table: pd.DataFrame) -> pd.Series:
    """Milliseconds per run of a profile table summed by `OPERATOR_CATEGORIES` (index:
    category, in that order, then ``"other"``; categories with no operator are 0)."""
    import pandas as pd

    category = {op: name for name, ops in OPERATOR_CATEGORIES.items() for op in ops}
    sums = table["ms_per_run"].groupby(lambda op: category.get(op, "other")).sum()
    return pd.Series({name: float(sums.get(name, 0.0))
                      for name in [*OPERATOR_CATEGORIES, "other"]}, name="ms_per_run")
