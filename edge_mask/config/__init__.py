"""Configuration: one typed, frozen, validated model per config file, split by section.

Rule: config/ imports only core/ and pydantic; it does no I/O except reading the config file it is given.
Every room may import it. Unknown keys are errors, and every error names the file, the key, the value and
what is expected (`files.py`). A command validates only the sections it uses: the device service reads
`EdgeConfig`, batch masking `MaskerConfig`, the cloud `ReceiverConfig`.

Add a setting: a field with its default and a docstring line in its section (`stages.py`).
"""

from edge_mask.config.base import DEFAULT_MODEL_CACHE, ENV_PREFIX, ConfigPath, Section
from edge_mask.config.files import (
    DEVICE_ID_PATTERN,
    EdgeConfig,
    MaskerConfig,
    ReceiverConfig,
    load_config,
    validate_config,
)
from edge_mask.config.stages import (
    BrokerConfig,
    CameraConfig,
    CameraSection,
    ClinicalConfig,
    DetectorConfig,
    EncodeConfig,
    MaskConfig,
    ModelsConfig,
    OnnxDetectorConfig,
    OpenCVCameraConfig,
    OpenCVYuNetDetectorConfig,
    Picamera2CameraConfig,
    SealConfig,
    ServiceConfig,
    SpoolConfig,
    SyntheticCameraConfig,
    TLSConfig,
    TrackerConfig,
    UplinkConfig,
)

__all__ = [
    "DEFAULT_MODEL_CACHE",
    "DEVICE_ID_PATTERN",
    "ENV_PREFIX",
    "BrokerConfig",
    "CameraConfig",
    "CameraSection",
    "ClinicalConfig",
    "ConfigPath",
    "DetectorConfig",
    "EdgeConfig",
    "EncodeConfig",
    "MaskConfig",
    "MaskerConfig",
    "ModelsConfig",
    "OnnxDetectorConfig",
    "OpenCVCameraConfig",
    "OpenCVYuNetDetectorConfig",
    "Picamera2CameraConfig",
    "ReceiverConfig",
    "SealConfig",
    "Section",
    "ServiceConfig",
    "SpoolConfig",
    "SyntheticCameraConfig",
    "TLSConfig",
    "TrackerConfig",
    "UplinkConfig",
    "load_config",
    "validate_config",
]
