"""Process hygiene for anything that holds raw frames: no core dumps.

Why: a core dump of the device service is a file of its memory, and its memory holds unmasked camera
frames (a crash dump of the service was found to contain raw face pixels). Raising RLIMIT_CORE to zero at
start, beside `LimitCORE=0` in the systemd unit, keeps a crash from writing faces to disk whoever starts
the process. The process is also marked non-dumpable where Linux allows it, so no other process of the
same user can attach and read its memory.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
import resource
import sys

log = logging.getLogger(__name__)

PR_SET_DUMPABLE = 4


def forbid_core_dumps() -> None:
    """Set the core file size limit to 0 (soft and hard) and, on Linux, make the process non-dumpable."""
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
    if sys.platform.startswith("linux"):
        libc_name = ctypes.util.find_library("c")
        if libc_name:
            try:
                if ctypes.CDLL(libc_name, use_errno=True).prctl(PR_SET_DUMPABLE, 0, 0, 0, 0) != 0:
                    log.warning("prctl(PR_SET_DUMPABLE, 0) failed (errno %d); core limit is 0 anyway",
                                ctypes.get_errno())
            except (OSError, AttributeError) as exc:
                log.warning("cannot mark the process non-dumpable (%s); core limit is 0 anyway", exc)
    log.debug("core dumps disabled (RLIMIT_CORE = 0)")
