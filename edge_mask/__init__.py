"""edge_mask: on-device face masking, sealed upload and cloud receipt for clinic cameras.

Importing the package is cheap and hardware-free: runtimes (onnxruntime, picamera2, turbojpeg) are
imported by the backend factories that need them.
"""

__version__ = "0.1.0"
