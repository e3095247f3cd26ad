"""The enrolled devices, re-read when `devices_dir` changes: revocation and renewal take effect in seconds.

Why poll, record by record: `edge-mask provision device` documents revoking a device by removing its record
and renewing it by replacing the record. A registry read once at start (or only when an unknown id shows
up) ignores both until a restart: a revoked device keeps storing frames, a renewed one is refused. So the
receiver looks at the directory every `poll_s` (its mtime and every record's mtime, size and inode: a
replaced file is a new inode; an edit in place changes mtime or size) and re-reads only what changed.

A record that does not load (truncated, hand-edited, wrong key) is skipped with one warning per version of
the file; the other devices keep working. Refusing every device because of one bad file would turn a typo
into an outage, and crashing would do the same.

If the directory itself vanishes while running (an unmounted volume, say), the last registry is kept and
one warning is logged: removing records one by one is the way to revoke.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

from edge_mask.core.errors import KeyMaterialError, UserError
from edge_mask.seal import Enrollment

log = logging.getLogger(__name__)

_Signature = tuple[int, int, int]  # mtime_ns, size, inode


class DeviceRegistry:
    """`devices`: device id -> Enrollment, from `<directory>/<id>.json`; `poll()` keeps it current."""

    def __init__(self, directory: Path, poll_s: float = 2.0) -> None:
        self.directory = Path(directory)
        self.poll_s = poll_s
        self.devices: dict[str, Enrollment] = {}
        self.version = 0
        self._files: dict[str, tuple[_Signature, Enrollment | None]] = {}
        self._dir_missing_warned = False
        self._next_poll = float("-inf")
        if not self.directory.is_dir():
            raise UserError(
                f"receiver.devices_dir = {self.directory}: not found; enroll devices with "
                "`edge-mask provision device` or fix the path"
            )
        self.poll(0.0, force=True)

    def poll(self, now: float, force: bool = False) -> bool:
        """Re-read changed records if `poll_s` has passed since the last look (or `force`); True on a change."""
        if not force and now < self._next_poll:
            return False
        self._next_poll = now + self.poll_s
        try:
            listing = self._scan()
        except OSError as exc:
            if not self._dir_missing_warned:
                log.warning("receiver: cannot read devices_dir %s (%s); keeping the last %d enrolled devices",
                            self.directory, exc.strerror, len(self.devices))
                self._dir_missing_warned = True
            return False
        self._dir_missing_warned = False
        if {name: sig for name, (sig, _) in self._files.items()} == listing:
            return False
        files: dict[str, tuple[_Signature, Enrollment | None]] = {}
        for name, sig in listing.items():
            known = self._files.get(name)
            files[name] = known if known is not None and known[0] == sig else (sig, self._load(name))
        self._files = files
        devices = {e.device_id: e for _, e in files.values() if e is not None}
        changed = devices != self.devices
        if changed:
            added = sorted(devices.keys() - self.devices.keys())
            removed = sorted(self.devices.keys() - devices.keys())
            renewed = sorted(d for d in devices.keys() & self.devices.keys() if devices[d] != self.devices[d])
            if self.version:
                log.info("receiver: enrolled devices changed: %d added, %d removed, %d renewed (now %d)",
                         len(added), len(removed), len(renewed), len(devices))
            else:
                log.info("receiver: %d enrolled devices", len(devices))
            self.devices = devices
            self.version += 1
        return changed

    def _scan(self) -> dict[str, _Signature]:
        listing: dict[str, _Signature] = {}
        with os.scandir(self.directory) as entries:
            for entry in entries:
                if not entry.name.endswith(".json") or entry.name.startswith("."):
                    continue
                try:
                    st = entry.stat()
                except FileNotFoundError:
                    continue  # removed while we looked
                listing[entry.name] = (st.st_mtime_ns, st.st_size, st.st_ino)
        return listing

    def _load(self, name: str) -> Enrollment | None:
        try:
            return Enrollment.load(self.directory / name)
        except KeyMaterialError as exc:
            log.warning("receiver: skipping enrollment record %s: %s", name, exc)
            return None
