"""An asyncio face of DurableProducer: await a batch's acks=all acknowledgement within a deadline, and know whether
the broker is reachable.

`send_async` produces without a thread per request: delivery reports (served by this producer's poll thread)
resolve an asyncio future. Records that fail early with a transient error are produced again (tenacity) while the
deadline allows; when the deadline passes the caller answers 503 and the client resends (blocks and events keep
their ids, consumers deduplicate). While the broker is known to be down (a metadata probe failed), requests fail
fast instead of waiting.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any

from confluent_kafka import KafkaError, KafkaException
from tenacity import AsyncRetrying, retry_if_exception_type, stop_after_delay, wait_exponential

from clinstream.core.config import Settings
from clinstream.core.kafka import BrokerUnavailable, DurableProducer, Message
from clinstream.ingest.broker_log import BrokerLogSummary

log = logging.getLogger("clinstream.ingest.producer")
LIBRDKAFKA_LOG = logging.getLogger("clinstream.ingest.librdkafka")


class _Transient(Exception):
    """Some records failed early with an error worth another attempt."""

    def __init__(self, failed: list[Message], reason: str) -> None:
        super().__init__(reason)
        self.failed = failed


class AsyncDurableProducer(DurableProducer):
    """DurableProducer (acks=all, idempotent) whose batches can be awaited from the event loop."""

    def __init__(self, settings: Settings, *, deadline_s: float, **overrides: Any) -> None:
        self._up = threading.Event()
        self._probe_wanted = threading.Event()
        self._fatal = False
        # With replicas, an acks=all write also waits while a dead broker is fenced (it is still in the ISR until
        # then): the deadline covers that, or every request in flight when a broker dies would get 503.
        self.deadline_s = deadline_s + settings.broker_failover_s
        self.log_summary = BrokerLogSummary(LIBRDKAFKA_LOG)  # an outage's librdkafka errors: one line per interval
        cfg: dict[str, Any] = {"message.timeout.ms": max(1000, int(self.deadline_s * 1000)), "error_cb": self._on_error,
                               "logger": self.log_summary}
        cfg.update(overrides)
        super().__init__(settings, **cfg)
        self._up.set()  # optimistic until a send or a probe says otherwise
        self._running = True
        self._poller = threading.Thread(target=self._poll_loop, name="kafka-poll", daemon=True)
        self._poller.start()

    def _poll_loop(self) -> None:
        while self._running:
            self._producer.poll(0.05)  # delivery reports, errors and librdkafka's log lines

    @property
    def broker_up(self) -> bool:
        """False once a probe failed (one is made after a send missed its deadline), until a delivery or a probe
        succeeds."""
        return self._up.is_set() and not self._fatal

    def _on_error(self, err: KafkaError) -> None:
        if err.fatal():
            self._fatal = True
            log.error("producer fatal error: %s", err.name())
        elif err.code() == KafkaError._ALL_BROKERS_DOWN:
            self._probe_wanted.set()

    def probe(self, timeout_s: float = 1.0) -> bool:
        """Ask the broker for metadata (blocking); updates `broker_up`."""
        try:
            self._producer.list_topics(timeout=timeout_s)
        except KafkaException:
            self._up.clear()
            return False
        self._set_up()
        self._probe_wanted.clear()
        return True

    def _set_up(self) -> None:
        self._up.set()
        self.log_summary.recovered()

    @property
    def probe_wanted(self) -> bool:
        """Whether a send missed its deadline or librdkafka reported every broker connection down since the last
        probe."""
        return self._probe_wanted.is_set()

    async def _attempt(self, topic: str, messages: Sequence[Message], deadline: float) -> None:
        loop = asyncio.get_running_loop()
        done: asyncio.Future[None] = loop.create_future()
        lock = threading.Lock()
        pending = [len(messages)]
        failed: list[tuple[Message, KafkaError]] = []

        def settle() -> None:
            if not done.done():
                done.set_result(None)

        def on_delivery(message: Message, err: KafkaError | None) -> None:
            with lock:
                if err is not None:
                    failed.append((message, err))
                pending[0] -= 1
                last = pending[0] == 0
            if last:
                loop.call_soon_threadsafe(settle)

        def callback(message: Message) -> Callable[[KafkaError | None, Any], None]:
            return lambda err, _msg: on_delivery(message, err)

        for message in messages:
            key, value, headers = message
            while True:
                try:
                    self._producer.produce(topic, value=value, key=key, headers=list(headers) if headers else None,
                                           on_delivery=callback(message))
                    break
                except BufferError:
                    if time.monotonic() > deadline:
                        raise BrokerUnavailable("local producer queue full") from None
                    await asyncio.sleep(0.01)
                except KafkaException as exc:
                    raise BrokerUnavailable(exc.args[0].name() if exc.args else "produce failed") from None
        try:
            await asyncio.wait_for(done, max(0.0, deadline - time.monotonic()))
        except TimeoutError:
            # Slow is not down: on a cluster one partition's acks can be late (its leader just moved, a loaded
            # broker) while every broker answers. A metadata probe decides; only a failed probe fails requests fast.
            self._probe_wanted.set()
            raise BrokerUnavailable("broker did not acknowledge in time") from None
        if failed:
            errors = [err for _, err in failed]
            if all(err.retriable() or err.code() in (KafkaError._QUEUE_FULL, KafkaError._TRANSPORT)
                   for err in errors):
                raise _Transient([m for m, _ in failed], errors[0].name())
            raise BrokerUnavailable(f"broker refused the batch: {errors[0].name()}")
        self._set_up()

    async def send_async(self, topic: str, messages: Sequence[Message], timeout_s: float | None = None) -> None:
        """Produce a batch and return once the broker acknowledged every record; else BrokerUnavailable."""
        if not messages:
            return
        if self._fatal:
            raise BrokerUnavailable("producer in a fatal state")
        budget = self.deadline_s if timeout_s is None else timeout_s
        deadline = time.monotonic() + budget
        todo: list[Message] = list(messages)
        try:
            async for attempt in AsyncRetrying(retry=retry_if_exception_type(_Transient),
                                               stop=stop_after_delay(budget),
                                               wait=wait_exponential(multiplier=0.05, max=0.5), reraise=True):
                with attempt:
                    try:
                        await self._attempt(topic, todo, deadline)
                    except _Transient as exc:
                        todo = exc.failed
                        raise
        except _Transient as exc:
            raise BrokerUnavailable(f"transient errors until the deadline: {exc}") from None

    def close_within(self, timeout_s: float) -> None:
        """Flush for at most `timeout_s` and stop the poll thread."""
        self.flush(timeout_s)
        self._running = False
        self._poller.join(timeout=1.0)
