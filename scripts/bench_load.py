"""Lean benchmark loader: pre-built, pre-gzipped telemetry requests sent over keep-alive HTTP/1.1 connections.

Every request body is serialised and gzip-compressed before the clock starts (`build_requests`), so the timed
phase only writes bytes and reads the 202: a few forked processes (one slice of the participants each), each
with a few threads holding one keep-alive connection. A connection is a plain socket (`_Connection`): the request
line and headers are one formatted string, sent with the body in one `sendmsg`, and the response is read by its
status line, Content-Length (or chunks) and Connection header only; `http.client` built and parsed every message
through `email` and cost 14.5-16.9 % of a core at the gateway-only limit. Each process reports its own CPU seconds
(user + system) between the start signal and its last response, so the loader's share of the machine is known.
"""

from __future__ import annotations

import gzip
import multiprocessing as mp
import os
import socket
import threading
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from multiprocessing.connection import Connection
from typing import Any

import numpy as np
import orjson

MINUTE_MS = 60_000


@dataclass(frozen=True)
class Request:
    """One pre-built request: participant position, round, bearer token, gzip body, readings it carries."""

    pos: int
    rnd: int
    token: str
    body: bytes
    readings: int


def iso_ms(ms: int) -> str:
    """RFC 3339 UTC with milliseconds (numpy: no per-call datetime objects)."""
    return str(np.datetime64(ms, "ms")) + "Z"


def build_requests(participants: Sequence[tuple[str, str, int]], t0_ms: int, blocks: int, rounds: range,
                   people: int | None = None, period_s: int = 1, seed: int = 11) -> list[Request]:
    """Requests in send order (round by round, every participant once per round), bodies gzip-compressed.

    `participants`: (participant id, device token, utc offset minutes) per cohort position; a request carries
    `blocks` consecutive one-minute heart-rate blocks of round `rnd`, minute = rnd * blocks + j.
    """
    offsets = list(range(0, MINUTE_MS, period_s * 1000))
    rng = np.random.default_rng(seed)
    values = [np.round(rng.normal(68, 6, len(offsets)), 1).tolist() for _ in range(97)]
    count = people or len(participants)
    out = []
    for rnd in rounds:
        for pos in range(count):
            pid, token, utc_offset = participants[pos]
            items = []
            for j in range(blocks):
                minute = rnd * blocks + j
                items.append({"block_id": str(uuid.uuid4()), "participant_id": pid, "sequence": minute,
                              "start": iso_ms(t0_ms + minute * MINUTE_MS), "utc_offset_minutes": utc_offset,
                              "schema": "heart-rate", "unit": "beats/min", "offsets_ms": offsets,
                              "values": values[(pos * 31 + minute) % len(values)]})
            body = gzip.compress(orjson.dumps({"blocks": items}), compresslevel=6)
            out.append(Request(pos, rnd, token, body, blocks * len(offsets)))
    return out


@dataclass
class LoadResult:
    """What was sent and accepted; send times of accepted requests by (participant position, round); response times."""

    requests: int = 0
    accepted_requests: int = 0
    readings: int = 0
    statuses: dict[int, int] = field(default_factory=dict)
    first_send: float = 0.0
    last_ack: float = 0.0
    cpu_s: float = 0.0
    send_times: dict[tuple[int, int], float] = field(default_factory=dict)
    response_s: list[float] = field(default_factory=list)

    @property
    def seconds(self) -> float:
        """Wall time from the first send to the last acknowledgement."""
        return max(self.last_ack - self.first_send, 1e-9)


def _cpu() -> float:
    t = os.times()
    return t.user + t.system


class _Connection:
    """One keep-alive HTTP/1.1 connection over a plain socket (opened on first use): POST a body, read the status."""

    def __init__(self, host: str, port: int) -> None:
        self.host = f"{host}:{port}"
        self.address = (host, port)
        self._sock: socket.socket | None = None
        self.buf = b""

    @property
    def sock(self) -> socket.socket:
        """The open socket (connected now if it is not)."""
        if self._sock is None:
            self._sock = socket.create_connection(self.address, timeout=60)
            self._sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            self.buf = b""
        return self._sock

    def reconnect(self) -> None:
        """Drop the connection (after an error or a `Connection: close`); the next request opens a new one."""
        self.close()

    def close(self) -> None:
        """Close the socket."""
        if self._sock is not None:
            self._sock.close()
            self._sock = None

    def post(self, path: str, token: str, body: bytes) -> int:
        """Send one gzip JSON POST and read its whole response; its status code."""
        head = (f"POST {path} HTTP/1.1\r\nHost: {self.host}\r\nAuthorization: Bearer {token}\r\n"
                f"Content-Type: application/json\r\nContent-Encoding: gzip\r\nContent-Length: {len(body)}\r\n\r\n"
                ).encode()
        parts = [memoryview(head), memoryview(body)]
        while parts:
            n = self.sock.sendmsg(parts)
            while parts and n >= len(parts[0]):
                n -= len(parts[0])
                parts.pop(0)
            if parts:
                parts[0] = parts[0][n:]
        lines = self._until(b"\r\n\r\n").split(b"\r\n")
        status = int(lines[0].split(b" ", 2)[1])
        length, chunked, close = 0, False, False
        for line in lines[1:]:
            name, _, value = line.partition(b":")
            name = name.strip().lower()
            if name == b"content-length":
                length = int(value)
            elif name == b"transfer-encoding":
                chunked = b"chunked" in value.lower()
            elif name == b"connection":
                close = value.strip().lower() == b"close"
        if chunked:
            while (size := int(self._until(b"\r\n").split(b";", 1)[0], 16)) > 0:
                self._take(size + 2)
            while self._until(b"\r\n"):  # trailers, then the empty line
                pass
        else:
            self._take(length)
        if close:
            self.reconnect()
        return status

    def _fill(self) -> None:
        chunk = self.sock.recv(65536)
        if not chunk:
            raise ConnectionError("the gateway closed the connection")
        self.buf += chunk

    def _until(self, marker: bytes) -> bytes:
        """The bytes before the next `marker` (consumed with it)."""
        while (end := self.buf.find(marker)) < 0:
            self._fill()
        out, self.buf = self.buf[:end], self.buf[end + len(marker):]
        return out

    def _take(self, n: int) -> None:
        while len(self.buf) < n:
            self._fill()
        self.buf = self.buf[n:]


def _child(host: str, port: int, requests: Sequence[Request], threads: int, seconds: float, rate_rps: float | None,
           go: Any, out: Connection) -> None:
    """One loader process: `threads` keep-alive connections pulling the next request in order."""
    go.wait()
    cpu0 = _cpu()
    began = time.monotonic()
    deadline = began + seconds
    lock = threading.Lock()
    nxt = [0]
    sent = np.zeros(len(requests))
    acked = np.zeros(len(requests))
    status = np.zeros(len(requests), dtype=np.int32)

    def worker() -> None:
        conn = _Connection(host, port)
        while True:
            with lock:
                i = nxt[0]
                nxt[0] += 1
            if i >= len(requests):
                break
            if rate_rps:
                time.sleep(max(0.0, began + i / rate_rps - time.monotonic()))
            if time.monotonic() >= deadline:
                break
            req = requests[i]
            sent[i] = time.time()
            try:
                status[i] = conn.post("/v1/telemetry", req.token, req.body)
            except (OSError, ValueError, IndexError):  # broken connection or a malformed response: counted, reconnected
                status[i] = -1
                conn.reconnect()
            acked[i] = time.time()
        conn.close()

    pool = [threading.Thread(target=worker) for _ in range(threads)]
    for t in pool:
        t.start()
    for t in pool:
        t.join()
    out.send((_cpu() - cpu0, sent, acked, status))
    out.close()


class Loader:
    """Forked loader processes, started before the clock (`prepare`) and released together (`run`)."""

    def __init__(self, host: str, port: int, processes: int = 2, threads: int = 8) -> None:
        self.host = host
        self.port = port
        self.processes = processes
        self.threads = threads
        self._ctx = mp.get_context("fork")
        self._procs: list[Any] = []
        self._pipes: list[Connection] = []
        self._slices: list[list[Request]] = []
        self._go: Any = None

    def prepare(self, requests: Sequence[Request], seconds: float, rate_rps: float | None = None) -> list[int]:
        """Fork the loader processes (a slice of the participants each, in send order); returns their pids."""
        self._go = self._ctx.Event()
        self._slices = [[r for r in requests if r.pos % self.processes == k] for k in range(self.processes)]
        self._procs, self._pipes = [], []
        for part in self._slices:
            receive, send = self._ctx.Pipe(duplex=False)
            rate = rate_rps * len(part) / max(len(requests), 1) if rate_rps else None
            proc = self._ctx.Process(target=_child, args=(self.host, self.port, part, self.threads, seconds, rate,
                                                          self._go, send), daemon=True)
            proc.start()
            send.close()
            self._procs.append(proc)
            self._pipes.append(receive)
        return [int(p.pid) for p in self._procs]

    def run(self) -> LoadResult:
        """Release the processes and collect what they sent and how much CPU they used."""
        self._go.set()
        result = LoadResult()
        firsts, lasts = [], []
        for part, pipe, proc in zip(self._slices, self._pipes, self._procs, strict=True):
            cpu_s, sent, acked, status = pipe.recv()
            proc.join(30)
            result.cpu_s += cpu_s
            done = sent > 0
            if done.any():
                firsts.append(float(sent[done].min()))
                lasts.append(float(acked[done].max()))
            result.response_s.extend((acked[done] - sent[done]).tolist())
            for i in np.flatnonzero(done).tolist():
                code = int(status[i])
                result.requests += 1
                result.statuses[code] = result.statuses.get(code, 0) + 1
                if code == 202:
                    req = part[i]
                    result.accepted_requests += 1
                    result.readings += req.readings
                    result.send_times[(req.pos, req.rnd)] = float(sent[i])
        result.first_send = min(firsts, default=0.0)
        result.last_ack = max(lasts, default=0.0)
        return result
