"""A loopback TCP relay that can freeze a client's traffic right after a chosen TLS record.

Why: "the receiver is killed between two chunks of a frame" needs the receiver to have had the first chunk
of a frame and not the second when it dies. The uplink writes a frame's chunks back to back, so on
loopback all of them reach the broker (and the receiver) within a millisecond: a test that watches and
kills can only hope. Between the device and the broker this relay sees TLS records: each MQTT packet the
client writes is one record (paho writes a packet per send; a chunk is far below the 16 KiB record
limit), so a full-size chunk is the first record of at least `min_record` bytes. `arm(min_record)`
forwards up to and including that record and then holds everything the client sends until `release()`;
the broker's answers keep flowing, so the connection stays up.

TLS is not terminated: the relay reads only the 5-byte record headers (TLS 1.2 and 1.3 alike).
"""

from __future__ import annotations

import socket
import threading

_HEADER = 5
_LISTEN_BACKLOG = 8


class HoldingRelay:
    """127.0.0.1:`port` -> (host, target_port); see the module docstring."""

    def __init__(self, host: str, target_port: int) -> None:
        self.target = (host, target_port)
        self._listener = socket.create_server(("127.0.0.1", 0), backlog=_LISTEN_BACKLOG)
        self.port = int(self._listener.getsockname()[1])
        self._lock = threading.Lock()
        self._min_record: int | None = None
        self._holding = False
        self._held: list[tuple[socket.socket, bytes]] = []
        self.held = threading.Event()
        self._closed = False
        self._sockets: list[socket.socket] = [self._listener]
        threading.Thread(target=self._accept, daemon=True).start()

    def arm(self, min_record: int) -> None:
        """Hold the client's traffic after its next record of at least `min_record` bytes."""
        with self._lock:
            self._min_record = min_record
            self.held.clear()

    def release(self) -> None:
        """Forward what was held and relay normally again."""
        with self._lock:
            self._holding, self._min_record = False, None
            held, self._held = self._held, []
            for upstream, record in held:
                upstream.sendall(record)

    def close(self) -> None:
        self._closed = True
        for sock in self._sockets:
            try:
                sock.close()
            except OSError:
                pass

    def _accept(self) -> None:
        while not self._closed:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            upstream = socket.create_connection(self.target)
            self._sockets += [client, upstream]
            threading.Thread(target=self._up, args=(client, upstream), daemon=True).start()
            threading.Thread(target=self._down, args=(upstream, client), daemon=True).start()

    def _down(self, upstream: socket.socket, client: socket.socket) -> None:
        """Broker to client: relayed as is."""
        try:
            while data := upstream.recv(65536):
                client.sendall(data)
        except OSError:
            pass
        finally:
            _shut(client)

    def _up(self, client: socket.socket, upstream: socket.socket) -> None:
        """Client to broker, whole TLS records at a time, so that holding starts on a record boundary."""
        buffer = b""
        try:
            while data := client.recv(65536):
                buffer += data
                while len(buffer) >= _HEADER:
                    size = _HEADER + int.from_bytes(buffer[3:5], "big")
                    if len(buffer) < size:
                        break
                    record, buffer = buffer[:size], buffer[size:]
                    self._forward(upstream, record)
        except OSError:
            pass
        finally:
            _shut(upstream)

    def _forward(self, upstream: socket.socket, record: bytes) -> None:
        with self._lock:
            if self._holding:
                self._held.append((upstream, record))
                return
            upstream.sendall(record)
            if self._min_record is not None and len(record) - _HEADER >= self._min_record:
                self._holding = True
                self.held.set()


def _shut(sock: socket.socket) -> None:
    try:
        sock.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass
