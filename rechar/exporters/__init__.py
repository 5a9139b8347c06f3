"""PyTorch -> ONNX export with verification (checker, no Loop, ONNX Runtime parity) and a cache."""

from rechar.exporters.graph import MODULE_KEY, ExportCheckError, node_modules
from rechar.exporters.onnx_export import (
    DEFAULT_EXPORTER,
    EXPORTERS,
    ExportOptions,
    ExportResult,
    export,
    exported_model,
    load_manifest,
    recorded_calibration,
)

__all__ = [
    "DEFAULT_EXPORTER", "EXPORTERS", "MODULE_KEY", "ExportCheckError", "ExportOptions", "ExportResult",
    "export", "exported_model", "load_manifest", "node_modules", "recorded_calibration",
]
