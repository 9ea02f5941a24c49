"""Shipping a model (notebook 08): export to TorchScript, torch.export and ONNX,
quantisation and pruning, the variants table, and the HTTP service.
"""

from medseg_helpers.exports import lazy_exports

_EXPORTS = {
    "BackgroundService": "service_process",
    "DEFAULT_OPSET": "export",
    "EXPORT_FORMATS": "variants",
    "INPUT_NAME": "export",
    "LATENCY_BUCKETS_S": "service_metrics",
    "OUTPUT_NAME": "export",
    "OnnxSegmenter": "runtime",
    "ServiceError": "uploads",
    "ServiceMetrics": "service_metrics",
    "ServiceStartError": "service_process",
    "VolumeSegmenter": "serve",
    "as_float32_array": "runtime",
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
    "load_exported": "runtime",
    "make_permanent": "prune",
    "mask_to_nifti_gz": "uploads",
    "parse_dicom_zip": "uploads",
    "parse_nifti": "uploads",
    "prunable_weights": "prune",
    "prune_channels": "prune",
    "prune_unstructured": "prune",
    "quantize_onnx_int8": "quantize",
    "quiet_exporters": "variants",
    "remove_pruned_channels": "prune",
    "run_server": "serve",
    "sniff_format": "uploads",
    "variant_table": "variants",
    "weight_sparsity": "prune",
}
__all__ = sorted(_EXPORTS)
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
