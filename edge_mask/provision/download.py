"""Reading model files over http(s), for `edge-mask models fetch` and the demo.

Why here and not in detect/: the detection room opens no connection; a device fetches its models when it
is provisioned (or from a local mirror), and `detect.models.fetch` verifies every byte against the
manifest's sha256 whoever read them.
"""

from __future__ import annotations

import urllib.error
import urllib.request
from collections.abc import Iterator

CHUNK = 1 << 16


def read_url(url: str, timeout: float) -> Iterator[bytes]:
    """Yield the body of an http(s) URL in chunks; raise OSError naming the HTTP status or network error."""
    if not url.startswith(("http://", "https://")):
        raise OSError(f"{url}: only http(s) URLs are read")
    request = urllib.request.Request(url, headers={"User-Agent": "edge-mask"})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            yield from iter(lambda: response.read(CHUNK), b"")
    except urllib.error.HTTPError as exc:
        raise OSError(f"HTTP {exc.code} {exc.reason}") from None
    except urllib.error.URLError as exc:
        raise OSError(str(exc.reason)) from None
