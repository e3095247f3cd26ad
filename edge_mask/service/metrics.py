"""Pipeline statistics: counters, frame rate, latency percentiles, and an optional Prometheus endpoint.

Why a sliding window for latencies: the stats message every `stats_interval_s` should say how the device
is doing now, not since boot, and a bounded deque keeps memory constant over months of uptime. Counters
are cumulative (Prometheus convention), so a receiver can difference them.

The Prometheus endpoint is plain `http.server` on a loopback address only (the config allows nothing
else): metrics reveal activity in an exam room and must not be reachable from the network.
"""

from __future__ import annotations

import logging
import socket
import threading
import time
from collections import Counter, deque
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from edge_mask.core.stats import percentile

log = logging.getLogger(__name__)

LATENCY_WINDOW = 2048
FPS_WINDOW_S = 5.0


class LatencyWindow:
    """The most recent `size` latencies in seconds."""

    def __init__(self, size: int = LATENCY_WINDOW) -> None:
        self._values: deque[float] = deque(maxlen=size)
        self._lock = threading.Lock()
        self.count = 0

    def add(self, seconds: float) -> None:
        with self._lock:
            self._values.append(seconds)
            self.count += 1

    def summary(self) -> dict[str, float | None]:
        with self._lock:
            values = list(self._values)
        p50, p99 = percentile(values, 50), percentile(values, 99)
        return {
            "p50_ms": None if p50 is None else round(p50 * 1000, 2),
            "p99_ms": None if p99 is None else round(p99 * 1000, 2),
            "max_ms": round(max(values) * 1000, 2) if values else None,
        }

    def values(self) -> list[float]:
        with self._lock:
            return list(self._values)


class RateMeter:
    """Events per second over the last `window_s` seconds."""

    def __init__(self, window_s: float = FPS_WINDOW_S, clock: Callable[[], float] = time.monotonic) -> None:
        self._window_s = window_s
        self._clock = clock
        self._times: deque[float] = deque()
        self._lock = threading.Lock()

    def tick(self) -> None:
        now = self._clock()
        with self._lock:
            self._times.append(now)
            self._trim(now)

    def rate(self) -> float:
        now = self._clock()
        with self._lock:
            self._trim(now)
            if len(self._times) < 2:
                return 0.0
            span = max(now - self._times[0], 1e-6)
            return (len(self._times) - 1) / span if span > 0 else 0.0

    def _trim(self, now: float) -> None:
        while self._times and now - self._times[0] > self._window_s:
            self._times.popleft()


class PipelineMetrics:
    """Thread-safe counters and windows the service stages update (see module docstring)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.counters: Counter[str] = Counter()
        self.dropped: Counter[str] = Counter()
        self.spooled_latency = LatencyWindow()
        self.acked_latency = LatencyWindow()
        self.fps = RateMeter()
        self.capture_fps = RateMeter()
        self.started = time.monotonic()

    def count(self, name: str, n: int = 1) -> None:
        with self._lock:
            self.counters[name] += n

    def drop(self, reason: str, n: int = 1) -> None:
        with self._lock:
            self.dropped[reason] += n

    def snapshot(self) -> dict[str, Any]:
        with self._lock:
            counters = dict(self.counters)
            dropped = dict(self.dropped)
        spooled = self.spooled_latency.summary()
        acked = self.acked_latency.summary()
        return {
            "uptime_s": round(time.monotonic() - self.started, 1),
            "fps": round(self.fps.rate(), 2),
            "capture_fps": round(self.capture_fps.rate(), 2),
            "frames_captured": counters.get("frames_captured", 0),
            "frames_masked": counters.get("frames_masked", 0),
            "frames_spooled": counters.get("frames_spooled", 0),
            "faces_masked": counters.get("faces_masked", 0),
            "fail_closed": counters.get("fail_closed", 0),
            "dropped": dropped,
            "dropped_total": sum(dropped.values()),
            "latency_capture_to_spooled_p50_ms": spooled["p50_ms"],
            "latency_capture_to_spooled_p99_ms": spooled["p99_ms"],
            "latency_capture_to_acked_p50_ms": acked["p50_ms"],
            "latency_capture_to_acked_p99_ms": acked["p99_ms"],
        }


# ------------------------------------------------------------------------------------------- prometheus


LABELLED = ("detector_model", "parity_state")
"""Text stats exported as a 1-valued gauge with the text in a `value` label (which model masks, and where the
on-device parity watch stands), so a dashboard can alert on `parity_state="fp32-fallback"`."""


def render_prometheus(stats: dict[str, Any], prefix: str = "edge_mask") -> str:
    """Prometheus text exposition of numeric stats; nested dicts become a `reason` label, LABELLED texts a
    `value` label."""
    lines: list[str] = []
    for key in sorted(stats):
        value = stats[key]
        name = f"{prefix}_{_metric_name(key)}"
        if key in LABELLED and isinstance(value, str):
            lines.append(f"# TYPE {name} gauge")
            lines.append(f'{name}{{value="{_escape(value)}"}} 1')
        elif isinstance(value, dict):
            numeric = {k: v for k, v in value.items() if _is_number(v)}
            if not numeric:
                continue
            lines.append(f"# TYPE {name} gauge")
            for label in sorted(numeric):
                lines.append(f'{name}{{reason="{_escape(str(label))}"}} {float(numeric[label]):g}')
        elif _is_number(value):
            lines.append(f"# TYPE {name} gauge")
            lines.append(f"{name} {float(value):g}")
    return "\n".join(lines) + "\n"


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, str)


def _metric_name(key: str) -> str:
    return "".join(c if c.isalnum() or c == "_" else "_" for c in key)


def _escape(label: str) -> str:
    return label.replace("\\", "\\\\").replace('"', '\\"').replace("\n", " ")


class _IPv6Server(ThreadingHTTPServer):
    address_family = socket.AF_INET6


class PrometheusServer:
    """Serves `GET /metrics` from `source()` on a loopback address in a daemon thread."""

    def __init__(self, host: str, port: int, source: Callable[[], dict[str, Any]]) -> None:
        stats_source = source

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                if self.path.split("?")[0] != "/metrics":
                    self.send_error(404)
                    return
                body = render_prometheus(stats_source()).encode()
                self.send_response(200)
                self.send_header("Content-Type", "text/plain; version=0.0.4")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: Any) -> None:
                log.debug("prometheus: " + format, *args)

        server_class = _IPv6Server if ":" in host else ThreadingHTTPServer
        self._server = server_class((host, port), Handler)
        self._server.daemon_threads = True
        self.port = int(self._server.server_address[1])
        self._thread = threading.Thread(target=self._server.serve_forever, name="edge-mask-metrics", daemon=True)

    def start(self) -> None:
        self._thread.start()
        log.info("prometheus metrics on http://127.0.0.1:%d/metrics", self.port)

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
