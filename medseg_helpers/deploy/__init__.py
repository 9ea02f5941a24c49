"""Shipping a model (notebook 08): export to TorchScript, torch.export and ONNX,
quantisation and pruning, the variants table, and the HTTP service.
"""

from medseg_helpers.exports import lazy_exports

_EXPORTS = {
    "BackgroundService": "service_process",
    "DEFAULT_OPSET": "export",
    "EXPORT_FORMATS": "variants",
    "INPUT_NAME": "export",
    "LATENCY_BUCKETS_S": "serve",
    "OUTPUT_NAME": "export",
    "OnnxSegmenter": "export",
    "ServiceError": "serve",
    "ServiceMetrics": "serve",
    "ServiceStartError": "service_process",
    "VolumeSegmenter": "serve",
    "calibration_images": "variants",
    "check_parity": "export",
    "count_effective_parameters": "prune",
    "create_app": "serve",
    "example_input": "variants",
    "export_onnx": "export",
    "export_program": "export",
    "export_torchscript": "export",
    "export_trained_model": "variants",
    "fine_tune": "prune",
    "free_port": "service_process",
    "is_pruned": "prune",
    "load_exported": "export",
    "make_permanent": "prune",
    "prunable_weights": "prune",
    "prune_channels": "prune",
    "prune_unstructured": "prune",
    "quantize_onnx_int8": "export",
    "quiet_exporters": "variants",
    "remove_pruned_channels": "prune",
    "run_server": "serve",
    "sniff_format": "serve",
    "variant_table": "variants",
    "weight_sparsity": "prune",
}
__all__ = sorted(_EXPORTS)
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
