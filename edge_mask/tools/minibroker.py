"""An embedded MQTT broker (3.1.1 and 5) for the demo when Mosquitto is not installed.

Why it exists: `edge-mask demo` must run on a fresh laptop with nothing beyond pip, yet show the real
path - mutual TLS, the certificate CN as identity, the per-device ACL and QoS 1 acknowledgements. This
broker does exactly what the device and receiver use and nothing more: CONNECT (3.1.1 and 5), PUBLISH
QoS 0/1 (QoS 2 accepted, delivered at QoS 1), SUBSCRIBE/UNSUBSCRIBE with `+`/`#` and `$share/<group>/`
(round-robin), retained messages, will messages, persistent sessions (in memory), PINGREQ, DISCONNECT.
It is not for production: use Mosquitto (see provisioning/README.md).

ACL (same as `pki.render_acl`): a client may write only its `<root>/<its CN>/frames[/...]`, `status` and
`stats`, and read under `<root>/<its CN>/`; the `readers` identities may read everything under `<root>/`
and write the devices' `<root>/+/ack`. Unlike the Mosquitto config, the client id is not forced to the CN.
Sizes are bounded and malformed input closes only the offending connection.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import ssl
import threading
from collections.abc import Sequence
from pathlib import Path

from edge_mask.tools.minibroker_codec import (
    CONNACK,
    CONNECT,
    DISCONNECT,
    PINGREQ,
    PINGRESP,
    PUBACK,
    PUBCOMP,
    PUBLISH,
    PUBREC,
    PUBREL,
    SUBACK,
    SUBSCRIBE,
    UNSUBACK,
    UNSUBSCRIBE,
    Connect,
    Message,
    ProtocolError,
    encode_packet,
    encode_props,
    encode_publish,
    parse_connect,
    parse_publish,
    parse_subscribe,
    parse_unsubscribe,
    read_packet,
    topic_matches,
    u16,
    valid_filter,
)
from edge_mask.tools.minibroker_session import MAX_INFLIGHT, Connection, Session, Subscription

log = logging.getLogger(__name__)

MAX_SESSIONS = 1000
MAX_RETAINED = 10_000
MAX_QUEUED = 100_000
MAX_QUEUED_BYTES = 256 * 1024 * 1024  # per session: an absent receiver cannot exhaust memory


class MiniBroker:
    """`with MiniBroker(cafile=..., certfile=..., keyfile=...) as broker:` listens on `broker.port`."""

    def __init__(
        self,
        *,
        cafile: Path,
        certfile: Path,
        keyfile: Path,
        host: str = "127.0.0.1",
        port: int = 0,
        readers: Sequence[str] = ("cloud-receiver",),
        topic_root: str = "edge-mask",
        max_packet: int = 1024 * 1024,
    ) -> None:
        self.host, self.port = host, port
        self.readers = frozenset(readers)
        self.root = topic_root
        self.max_packet = max_packet
        self.ssl = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH, cafile=str(cafile))
        self.ssl.load_cert_chain(str(certfile), str(keyfile))
        self.ssl.verify_mode = ssl.CERT_REQUIRED
        self.ssl.minimum_version = ssl.TLSVersion.TLSv1_2
        self.sessions: dict[str, Session] = {}
        self.retained: dict[str, Message] = {}
        self.counters: dict[str, int] = {"connects": 0, "refused": 0, "published": 0, "denied": 0, "dropped": 0}
        self._rr = itertools.count()
        self._conns: set[Connection] = set()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._server: asyncio.Server | None = None
        self._thread: threading.Thread | None = None
        self._ready = threading.Event()
        self._error: BaseException | None = None

    # ------------------------------------------------------------------------------------- lifecycle

    def start(self, timeout: float = 10.0) -> None:
        self._thread = threading.Thread(target=self._run, name="minibroker", daemon=True)
        self._thread.start()
        if not self._ready.wait(timeout) or self._error is not None:
            raise RuntimeError(f"embedded MQTT broker did not start: {self._error}")
        log.info("embedded MQTT broker listening on %s:%d (TLS, client certificates required)", self.host, self.port)

    def _run(self) -> None:
        loop = asyncio.new_event_loop()
        self._loop = loop
        try:
            self._server = loop.run_until_complete(asyncio.start_server(
                self._serve, self.host, self.port, ssl=self.ssl, ssl_handshake_timeout=10.0, limit=self.max_packet
            ))
            self.port = int(self._server.sockets[0].getsockname()[1])
        except OSError as exc:
            self._error = exc
            self._ready.set()
            loop.close()
            return
        self._ready.set()
        try:
            loop.run_forever()
        finally:
            loop.close()

    def stop(self) -> None:
        loop, thread = self._loop, self._thread
        if loop is None or thread is None or loop.is_closed():
            return

        async def shutdown() -> None:
            if self._server is not None:
                self._server.close()
            for conn in list(self._conns):
                conn.writer.transport.abort()  # no TLS goodbye: the handlers see end-of-stream and finish
            others = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
            if others:
                await asyncio.wait(others, timeout=2.0)
            loop.stop()

        asyncio.run_coroutine_threadsafe(shutdown(), loop)
        thread.join(timeout=10)

    def __enter__(self) -> MiniBroker:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # ------------------------------------------------------------------------------------ connections

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        conn = Connection(reader, writer)
        self._conns.add(conn)
        try:
            await self._connection(conn)
        except (ProtocolError, asyncio.IncompleteReadError, ConnectionError, ssl.SSLError, TimeoutError) as exc:
            log.debug("minibroker: closing %s: %s", conn.username or "client", exc)
        except Exception:  # a bug must cost one connection, not the broker
            log.warning("minibroker: internal error on a connection", exc_info=True)
        finally:
            self._conns.discard(conn)
            self._disconnected(conn)
            conn.close()

    async def _connection(self, conn: Connection) -> None:
        ptype, _flags, body = await asyncio.wait_for(read_packet(conn.reader, self.max_packet), 10.0)
        if ptype != CONNECT:
            raise ProtocolError("first packet is not CONNECT")
        info = parse_connect(body)
        if not self._accept(conn, info):
            return
        timeout = info.keepalive * 1.5 if info.keepalive else None
        while True:
            ptype, flags, body = await asyncio.wait_for(read_packet(conn.reader, self.max_packet), timeout)
            if ptype == DISCONNECT:
                reason = body[0] if info.v5 and body else 0
                conn.clean_exit = reason != 0x04  # 0x04: "disconnect with will message"
                return
            self._dispatch(conn, ptype, flags, body)
            await conn.writer.drain()

    def _accept(self, conn: Connection, info: Connect) -> bool:
        cert = conn.writer.get_extra_info("peercert") or {}
        cn = next((v for rdn in cert.get("subject", ()) for k, v in rdn if k == "commonName"), "")
        conn.username, conn.info = str(cn), info
        code = 0
        if not cn:
            code = 0x87 if info.v5 else 5  # not authorized
        elif info.will is not None and not self.may_write(cn, info.will.topic):
            code = 0x87 if info.v5 else 5
        elif not info.client_id and not info.clean:
            code = 0x85 if info.v5 else 2  # client identifier not valid
        elif len(self.sessions) >= MAX_SESSIONS and info.client_id not in self.sessions:
            code = 0x97 if info.v5 else 3  # quota exceeded / server unavailable
        if code:
            self.counters["refused"] += 1
            props = encode_props({}) if info.v5 else b""
            conn.send(encode_packet(CONNACK, 0, bytes([0, code]) + props))
            log.info("minibroker: refused %r (%s): code %#x", info.client_id, cn or "no CN", code)
            return False
        assigned = ""
        client_id = info.client_id
        if not client_id:
            client_id = assigned = f"auto-{next(self._rr)}-{id(conn):x}"
        old = self.sessions.get(client_id)
        if old is not None and old.conn is not None:  # session takeover: the old connection goes
            old.conn.clean_exit = True
            old.conn.close()
            old.conn = None
        persistent = (info.session_expiry > 0) if info.v5 else not info.clean
        present = old is not None and not info.clean and old.username == cn
        session = old if present and old is not None else Session(client_id, cn, persistent)
        session.persistent, session.v5, session.conn = persistent, info.v5, conn
        session.max_inflight = max(1, min(MAX_INFLIGHT, info.receive_max))
        self.sessions[client_id] = session
        conn.session = session
        self.counters["connects"] += 1
        props = b""
        if info.v5:
            fields: dict[int, object] = {0x24: 1, 0x25: 1, 0x27: self.max_packet, 0x28: 1, 0x29: 0, 0x2A: 1, 0x22: 0}
            if assigned:
                fields[0x12] = assigned
            props = encode_props(fields)
        conn.send(encode_packet(CONNACK, 0, bytes([1 if present else 0, 0]) + props))
        log.info("minibroker: %s connected as %r (v%s)", cn, client_id, "5" if info.v5 else "3.1.1")
        if present:
            for pid, msg in list(session.inflight.items()):
                conn.send(encode_publish(msg, 1, pid, dup=True, v5=info.v5))
            self._drain(session)
        return True

    def _disconnected(self, conn: Connection) -> None:
        session, info = conn.session, conn.info
        if session is None or info is None or session.conn is not conn:
            return
        session.conn = None
        if info.will is not None and not conn.clean_exit:
            self.publish(info.will, sender=session)
        if not session.persistent:
            self.sessions.pop(session.client_id, None)

    # --------------------------------------------------------------------------------------- packets

    def _dispatch(self, conn: Connection, ptype: int, flags: int, body: bytes) -> None:
        session, info = conn.session, conn.info
        assert session is not None and info is not None
        if ptype == PUBLISH:
            msg, pid = parse_publish(flags, body, info.v5)
            allowed = self.may_write(conn.username, msg.topic)
            if msg.qos == 2:
                if pid not in conn.qos2_pending and allowed:
                    self.publish(msg, sender=session)
                conn.qos2_pending.add(pid)
                conn.send(encode_packet(PUBREC, 0, u16(pid)))
                return
            if allowed:
                self.publish(msg, sender=session)
            else:
                self.counters["denied"] += 1
                log.info("minibroker: denied %s publishing to %s", conn.username, msg.topic)
            if msg.qos == 1:
                ack = u16(pid) + (bytes([0x87]) if info.v5 and not allowed else b"")
                conn.send(encode_packet(PUBACK, 0, ack))
        elif ptype == PUBACK:
            if len(body) < 2:
                raise ProtocolError("short PUBACK")
            session.inflight.pop(int.from_bytes(body[:2], "big"), None)
            self._drain(session)
        elif ptype == PUBREL:
            pid = int.from_bytes(body[:2], "big")
            conn.qos2_pending.discard(pid)
            conn.send(encode_packet(PUBCOMP, 0, u16(pid)))
        elif ptype in (PUBREC, PUBCOMP):
            raise ProtocolError("this broker never sends QoS 2")
        elif ptype == SUBSCRIBE:
            self._subscribe(conn, session, body, info.v5)
        elif ptype == UNSUBSCRIBE:
            pid, filters = parse_unsubscribe(body, info.v5)
            codes = bytes(0 if session.subs.pop(f, None) else 0x11 for f in filters)
            conn.send(encode_packet(UNSUBACK, 0, u16(pid) + ((encode_props({}) + codes) if info.v5 else b"")))
        elif ptype == PINGREQ:
            conn.send(encode_packet(PINGRESP, 0, b""))
        else:
            raise ProtocolError(f"unexpected packet type {ptype}")

    def _subscribe(self, conn: Connection, session: Session, body: bytes, v5: bool) -> None:
        pid, requests = parse_subscribe(body, v5)
        codes = []
        for full, options in requests:
            group, flt = None, full
            if full.startswith("$share/"):
                parts = full.split("/", 2)
                if len(parts) < 3 or not parts[1] or "+" in parts[1] or "#" in parts[1]:
                    codes.append(0x8F if v5 else 0x80)  # topic filter invalid
                    continue
                group, flt = parts[1], parts[2]
            if not valid_filter(flt):
                codes.append(0x8F if v5 else 0x80)
                continue
            if not self.may_subscribe(conn.username, flt):
                codes.append(0x87 if v5 else 0x80)
                log.info("minibroker: denied %s subscribing to %s", conn.username, full)
                continue
            qos = min(options & 0x03, 1)
            is_new = full not in session.subs
            session.subs[full] = Subscription(flt, qos, bool(options & 0x04) and group is None, group)
            codes.append(qos)
            retain_handling = (options >> 4) & 0x03
            if group is None and (retain_handling == 0 or (retain_handling == 1 and is_new)):
                for msg in list(self.retained.values()):
                    if topic_matches(flt, msg.topic) and self.may_read(session.username, msg.topic):
                        self._deliver(session, msg, min(qos, msg.qos), retain=True)
        conn.send(encode_packet(SUBACK, 0, u16(pid) + (encode_props({}) if v5 else b"") + bytes(codes)))

    # ------------------------------------------------------------------------------------ routing, ACL

    def may_write(self, user: str, topic: str) -> bool:
        """As `render_acl`: a device its frames, status and stats; a reader (receiver) the devices' acks."""
        levels = topic.split("/")
        if user in self.readers and len(levels) == 3 and levels[0] == self.root and levels[2] == "ack":
            return True
        own = levels[:2] == [self.root, user]
        return own and len(levels) > 2 and (levels[2] == "frames" or (len(levels) == 3 and levels[2] in
                                                                      ("status", "stats")))

    def may_read(self, user: str, topic: str) -> bool:
        own = topic.startswith(f"{self.root}/{user}/")
        return own or (user in self.readers and topic.startswith(f"{self.root}/"))

    def may_subscribe(self, user: str, flt: str) -> bool:
        """A filter is allowed when every topic it can match is readable (checked on its fixed prefix)."""
        levels = flt.split("/")
        own = [self.root, user]
        if user in self.readers and levels[0] == self.root and (len(levels) > 1 or flt == self.root):
            return True
        return levels[:2] == own

    def publish(self, msg: Message, sender: Session | None = None) -> None:
        self.counters["published"] += 1
        if msg.retain:
            if not msg.payload:
                self.retained.pop(msg.topic, None)
            elif msg.topic in self.retained or len(self.retained) < MAX_RETAINED:
                self.retained[msg.topic] = msg
        groups: dict[tuple[str, str], list[tuple[Session, int]]] = {}
        for session in list(self.sessions.values()):
            if not self.may_read(session.username, msg.topic):
                continue
            best = -1
            for sub in session.subs.values():
                if not topic_matches(sub.filter, msg.topic):
                    continue
                if sub.group is not None:
                    groups.setdefault((sub.group, sub.filter), []).append((session, sub.qos))
                elif not (sub.no_local and session is sender):
                    best = max(best, sub.qos)
            if best >= 0:
                self._deliver(session, msg, min(best, msg.qos))
        for members in groups.values():
            online = [m for m in members if m[0].conn is not None] or members
            session, qos = online[next(self._rr) % len(online)]
            self._deliver(session, msg, min(qos, msg.qos))

    def _deliver(self, session: Session, msg: Message, qos: int, retain: bool = False) -> None:
        out = Message(msg.topic, msg.payload, qos, retain, msg.props)
        if qos == 0:
            if session.conn is not None:
                session.conn.send(encode_publish(out, 0, 0, v5=session.v5))
            return
        if session.conn is None and not session.persistent:
            return
        while session.queue and (len(session.queue) >= MAX_QUEUED
                                 or session.queued_bytes + len(out.payload) > MAX_QUEUED_BYTES):
            session.queued_bytes -= len(session.queue.popleft().payload)
            self.counters["dropped"] += 1
            log.warning("minibroker: queue of %r full; dropped its oldest message", session.client_id)
        session.queue.append(out)
        session.queued_bytes += len(out.payload)
        self._drain(session)

    def _drain(self, session: Session) -> None:
        conn = session.conn
        while conn is not None and session.queue and len(session.inflight) < session.max_inflight:
            msg = session.queue.popleft()
            session.queued_bytes -= len(msg.payload)
            pid = session.next_id()
            session.inflight[pid] = msg
            conn.send(encode_publish(msg, 1, pid, v5=session.v5))
