"""``App``: services + a transport URL, wired into topology, consumers and a bus.

The app owns its registry (no globals): two apps in one process never see each other's handlers.
"""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar

import structlog

from framework.bus import Answer, Bus, PublishMiddleware, Requester
from framework.codec import DEFAULT_MAX_BODY_SIZE, Codec
from framework.consumer import HandlerPipeline
from framework.context import Context
from framework.errors import AccessRefused, ConfigurationError
from framework.handlers import HandlerSpec, Service, check_unique_handlers
from framework.messages import Command, Event, Message, MessageKind, Query, Reply, reply_type_of
from framework.middleware import Middleware
from framework.observe import Observer, combine
from framework.resilience.registry import Breakers
from framework.retry import RetryPolicy
from framework.routing import DEFAULT_DELIVERY_LIMIT, QUEUE_TYPES, Naming
from framework.saga.definition import SagaTimeout
from framework.saga.outbox import OutboxRelay, OutboxWriter
from framework.saga.runner import SagaConflict, SagaRunner
from framework.saga.signing import SagaKeys, check_secret, env_secret
from framework.store.base import ConcurrencyConflict, Store, store_from_url
from framework.store.migrations import Migrations, PendingStep, SchemaBehind
from framework.store.migrations import collect as collect_migrations
from framework.transport.base import BindingSpec, Consumer, HeaderLimits, Topology, Transport
from framework.upcasting import Upcaster
from framework.urls import redact

__all__ = ["App", "AppConfig", "transport_from_url"]

R = TypeVar("R", bound=Reply)
_log = structlog.get_logger("leveret.app")

DEFAULT_DB_URL = "sqlite:///leveret.sqlite3"


@dataclass(frozen=True, slots=True)
class AppConfig:
    """Settings of an app; every handler may override retry, timeout and prefetch.

    Args:
        prefix: first part of every exchange and queue name.
        prefetch: unacked deliveries per handler queue.
        handler_timeout: seconds a handler may run; keep it far below the broker's
            ``consumer_timeout`` (30 min by default).
        retry: what happens after a handler fails.
        max_body_size: bodies larger than this are dead-lettered unread.
        query_timeout: default seconds ``request`` waits for a reply.
        shutdown_grace: seconds in-flight handlers get to finish on stop; the rest are nacked
            back to their queues.
        queue_type: ``"classic"`` (the default, for one broker node) or ``"quorum"`` (for a
            cluster): every durable queue the app owns — handler queues, DLQs, the delay
            queues of retries and saga deadlines — is then a quorum queue, replicated over the
            cluster's nodes, with a delivery limit and at-least-once dead-lettering.
        quorum_delivery_limit: deliveries before a quorum queue dead-letters a message — the
            guard against a poison message that kills its worker before any retry header can
            be written (default 20 with ``queue_type="quorum"``). With classic queues, setting
            it makes only the command and event queues quorum queues.
        reply_queues: queue names a query's ``reply_to`` may name besides a direct reply-to
            address (``amq.rabbitmq.reply-to``); any other query is dead-lettered unanswered.
        dlq_max_length: when set, each DLQ keeps at most this many dead letters and drops its
            oldest past it (``x-max-length``, ``drop-head``): a flood of bad input cannot
            fill the broker, at the price of the oldest evidence. None: unbounded.
        dlq_max_bytes: the same bound on the DLQ's bytes (``x-max-length-bytes``).
        header_limits: bounds on a delivery's header table (bytes, depth, values); a delivery
            past them is rejected to its DLQ unread. Process-wide on RabbitMQ.
        secret: the key (at least 16 characters) of the message ids and timeout tokens the
            sagas and transactional handlers derive (``framework.saga.signing``). None reads
            ``LEVERET_SECRET``, and without it the workers share a random secret kept in the
            saga store. Never shown.
        upgrade_db: what a starting app does with its store's schema (``leveret db
            upgrade``): True applies missing steps under the upgrade lock; False only checks,
            and refuses to start on a schema that is behind (``SchemaBehind``); None, the
            default, upgrades an embedded store (SQLite, memory: one file, no other process's
            live transactions to take DDL locks against) and checks a PostgreSQL one, where
            the upgrade is a deploy step.
    """

    prefix: str = "leveret"
    prefetch: int = 100
    handler_timeout: float = 60.0
    retry: RetryPolicy = field(default_factory=RetryPolicy)
    max_body_size: int = DEFAULT_MAX_BODY_SIZE
    query_timeout: float = 5.0
    shutdown_grace: float = 10.0
    queue_type: str = "classic"
    quorum_delivery_limit: int | None = None
    reply_queues: tuple[str, ...] = ()
    dlq_max_length: int | None = None
    dlq_max_bytes: int | None = None
    header_limits: HeaderLimits = field(default_factory=HeaderLimits)
    secret: str | None = field(default=None, repr=False)
    upgrade_db: bool | None = None

    def __post_init__(self) -> None:
        size = self.max_body_size
        if isinstance(size, bool) or not isinstance(size, int) or size < 1:
            raise ConfigurationError(
                f"max_body_size={size!r}: use a positive number of bytes "
                f"(default {DEFAULT_MAX_BODY_SIZE})"
            )
        for name in ("dlq_max_length", "dlq_max_bytes"):
            bound = getattr(self, name)
            if bound is not None and (
                isinstance(bound, bool) or not isinstance(bound, int) or bound < 1
            ):
                raise ConfigurationError(f"{name}={bound!r}: use a positive integer or None")
        queues: object = self.reply_queues
        if isinstance(queues, str):
            raise ConfigurationError(f"reply_queues={queues!r}: give a tuple of queue names")
        if self.queue_type not in QUEUE_TYPES:
            raise ConfigurationError(
                f"queue_type={self.queue_type!r}: use 'classic' (one broker node) or 'quorum' "
                "(a cluster)"
            )
        limit = self.quorum_delivery_limit
        if limit is not None and (isinstance(limit, bool) or limit < 1):
            raise ConfigurationError(
                f"quorum_delivery_limit={limit!r}: use a positive number of deliveries or None"
            )
        if self.secret is not None:
            check_secret(self.secret, "AppConfig.secret")


def transport_from_url(url: str, *, header_limits: HeaderLimits | None = None) -> Transport:
    """``memory://`` -> the in-process broker; ``amqp://`` or ``amqps://`` -> RabbitMQ.

    Args:
        header_limits: bounds on received header tables (RabbitMQ; default ``HeaderLimits()``).

    Raises:
        ConfigurationError: any other scheme.
    """
    scheme = url.split("://", 1)[0].lower() if "://" in url else ""
    if scheme == "memory":
        from framework.transport.memory import MemoryTransport

        return MemoryTransport()
    if scheme in ("amqp", "amqps"):
        from framework.transport.amqp import AmqpConfig, AmqpTransport

        return AmqpTransport(url, config=AmqpConfig(header_limits=header_limits or HeaderLimits()))
    raise ConfigurationError(
        f"unsupported transport URL {redact(url)!r}: use memory:// or amqp://user:pass@host/vhost"
    )


class App(Requester):
    """A set of services running on one transport.

    Args:
        services: the services whose handlers this app runs.
        url: ``memory://`` (default, in-process) or ``amqp://user:password@host:port/vhost``.
        config: app-wide settings.
        transport: a ready transport instead of ``url`` (e.g. two apps on one MemoryBroker).
        middleware: consume middleware around every handler, outermost first.
        publish_middleware: middleware around every publish, outermost first.
        contracts: extra contract classes this app only sends (for export and checks).
        upcasters: conversions from older contract versions to the ones its handlers read.
        db_url: the store for sagas and transactional handlers: ``sqlite:///file.db``
            (default ``sqlite:///leveret.sqlite3``), ``postgresql://...`` or ``memory://``.
            Only opened when the app has a saga or a transactional handler.
        store: a ready store instead of ``db_url``.
        breakers: circuit breakers gating sends, publishes and queries to downstreams
            (``framework.resilience``); they run innermost among the publish middleware and
            outermost among the consume middleware.
        query_url: optional separate credentials for the query side, e.g.
            ``amqp://reader:password@host/vhost``: query consumers, their replies and
            ``request`` use this connection; commands, events and topology use ``url``.
        query_transport: a ready transport instead of ``query_url``.
        observers: instrumentation told about every delivery, publish, outbox row and saga
            transition (``framework.observe``): ``framework.metrics.PrometheusMetrics``,
            ``framework.tracing.Tracing``, or your own. More can be added with ``observe``.

    Raises:
        RegistrationError: a command or query has two handlers, or a handler is malformed.
        ConfigurationError: the URL or prefix is unusable.
    """

    def __init__(
        self,
        services: Sequence[Service],
        *,
        url: str = "memory://",
        config: AppConfig | None = None,
        transport: Transport | None = None,
        middleware: Sequence[Middleware] = (),
        publish_middleware: Sequence[PublishMiddleware] = (),
        contracts: Iterable[type[Message]] = (),
        upcasters: Iterable[Upcaster[Any, Any]] = (),
        db_url: str | None = None,
        store: Store | None = None,
        breakers: Breakers | None = None,
        query_url: str | None = None,
        query_transport: Transport | None = None,
        observers: Sequence[Observer] = (),
    ) -> None:
        self.config = config or AppConfig()
        self.services = tuple(services)
        self.url = url
        self.naming = Naming(
            self.config.prefix,
            queue_type=self.config.queue_type,
            delivery_limit=self.config.quorum_delivery_limit or DEFAULT_DELIVERY_LIMIT,
        )
        self.handlers = check_unique_handlers(self.services)
        sent = [cls for service in self.services for cls in service.sends]
        # Circuit breakers: the last publish middleware (closest to the broker, so they time
        # and judge the publish itself) and the first consume middleware of the handlers that
        # need one (see Breakers.consume_middleware_for).
        self.breakers = breakers
        if breakers is not None:
            breakers.bind(self)
            publish_middleware = [*publish_middleware, breakers.publish_middleware]
        self.codec = Codec(
            _contracts(self.handlers, [*sent, *contracts]),
            upcasters=upcasters,
            max_body_size=self.config.max_body_size,
        )
        limits = self.config.header_limits
        self.transport = (
            transport if transport is not None else transport_from_url(url, header_limits=limits)
        )
        if query_transport is None and query_url is not None:
            query_transport = transport_from_url(query_url, header_limits=limits)
        self.query_transport = query_transport
        self.bus = Bus(
            self.transport,
            self.codec,
            self.naming,
            middleware=publish_middleware,
            query_timeout=self.config.query_timeout,
            query_transport=query_transport,
        )
        by_service = {s.name: s for s in self.services}
        self.store: Store | None = None
        self.relay: OutboxRelay | None = None
        self._writer: OutboxWriter | None = None
        self.sagas: dict[str, SagaRunner] = {}
        # One secret for all of the app's sagas; read (or made in the store) on first use.
        self._saga_keys = SagaKeys(
            self.config.secret if self.config.secret is not None else env_secret()
        )
        if store is not None or any(h.saga is not None or h.transactional for h in self.handlers):
            self.store = store or store_from_url(db_url or DEFAULT_DB_URL)
            self.relay = OutboxRelay(
                self.store, self.transport, self.naming, on_refused=self._refused
            )
            if breakers is not None:
                # Outbox rows go through the same breakers; refused destinations are parked.
                self.relay.use_breakers(breakers)
            writer = self._writer = OutboxWriter(self.codec, self.naming)
            self.handlers = [self._bind_store(h, writer) for h in self.handlers]
        self._sweeper: asyncio.Task[None] | None = None
        self.pipelines: list[HandlerPipeline] = []
        delays: set[int] = set()
        # (queue, kind, wire name, handler_topology keywords) of every handler queue.
        self._queue_plan: list[tuple[str, MessageKind, str, dict[str, Any]]] = []
        # Bindings an older leveret declared and this one must not keep: start() removes them.
        self._retired_bindings: tuple[BindingSpec, ...] = ()
        for spec in self.handlers:
            service = by_service[spec.service]
            queue = self.naming.handler_queue(spec.service, spec.message_type.__wire_name__)
            retry = spec.retry or service.retry or self.config.retry
            if spec.kind is not MessageKind.QUERY:
                delays.update(retry.delay_ms())
            self.pipelines.append(
                HandlerPipeline(
                    spec,
                    queue=queue,
                    codec=self.codec,
                    bus=self.bus,
                    naming=self.naming,
                    retry=retry,
                    timeout=spec.timeout or service.timeout or self.config.handler_timeout,
                    on_refused=self._refused,
                    middleware=self._consume_middleware(spec, middleware),
                    reply_queues=frozenset(self.config.reply_queues),
                )
            )
            internal = issubclass(spec.message_type, SagaTimeout)
            if internal:
                self._retired_bindings += (
                    BindingSpec(
                        queue,
                        self.naming.exchange_for(spec.kind),
                        spec.message_type.__wire_name__,
                    ),
                )
            self._queue_plan.append(
                (
                    queue,
                    spec.kind,
                    spec.message_type.__wire_name__,
                    {
                        "delivery_limit": (
                            None
                            if spec.kind is MessageKind.QUERY
                            else self.config.quorum_delivery_limit
                        ),
                        "max_length": service.max_length,
                        "dlq_max_length": self.config.dlq_max_length,
                        "dlq_max_bytes": self.config.dlq_max_bytes,
                        # A saga's timeouts come only through the delay tier, never from the
                        # public commands exchange.
                        "public": not internal,
                    },
                )
            )
        self._delays = frozenset(delays)
        self.topology = self.topology_for(self.naming)
        self._prefetch = {
            p.queue: p.spec.prefetch or by_service[p.spec.service].prefetch or self.config.prefetch
            for p in self.pipelines
        }
        self._consumers: list[Consumer] = []
        self._started = False
        self.failure: ConfigurationError | None = None
        self._failed = asyncio.Event()
        self._halting: asyncio.Future[None] | None = None
        self._observers: list[Observer] = []
        self.observer: Observer | None = None
        if observers:
            self.observe(*observers)

    def __repr__(self) -> str:
        return f"App(url={redact(self.url)!r}, services={[s.name for s in self.services]})"

    def _consume_middleware(
        self, spec: HandlerSpec, middleware: Sequence[Middleware]
    ) -> Sequence[Middleware]:
        """The consume middleware of handler ``spec``: the breakers' guard first, if it needs
        one."""
        guard = None if self.breakers is None else self.breakers.consume_middleware_for(spec)
        return middleware if guard is None else [guard, *middleware]

    def _bind_store(self, spec: HandlerSpec, writer: OutboxWriter) -> HandlerSpec:
        """Point saga entry points at their runner and wrap transactional handlers."""
        assert self.store is not None
        assert self.relay is not None
        if spec.saga is not None:
            runner = self.sagas.get(spec.saga.name)
            if runner is None:
                timeout_wire = spec.saga.timeout_type.__wire_name__
                runner = SagaRunner(
                    spec.saga,
                    store=self.store,
                    writer=writer,
                    relay=self.relay,
                    consumer=f"{spec.service}.saga.{spec.saga.name}",
                    timeout_queue=self.naming.handler_queue(spec.service, timeout_wire),
                    keys=self._saga_keys,
                )
                self.sagas[spec.saga.name] = runner
            return dataclasses.replace(spec, func=runner.handle)
        if spec.transactional:
            queue = self.naming.handler_queue(spec.service, spec.message_type.__wire_name__)
            return dataclasses.replace(
                spec, func=transactional(spec.func, self.relay, writer, queue, keys=self._saga_keys)
            )
        return spec

    @property
    def started(self) -> bool:
        """Connected and declared by ``start()``, and not stopped since (health checks)."""
        return self._started

    def observe(self, *observers: Observer) -> None:
        """Add instrumentation before the app starts (``leveret run --metrics-port`` adds
        ``PrometheusMetrics`` this way); see ``framework.observe``.

        Raises:
            ConfigurationError: the app is running.
        """
        if self._started:
            raise ConfigurationError("observe() must be called before the app starts")
        self._observers.extend(observers)
        observer = self.observer = combine(self._observers)
        self.bus.observer = observer
        for pipeline in self.pipelines:
            pipeline.observer = observer
        if self.relay is not None:
            self.relay.observer = observer
        if self._writer is not None:
            self._writer.observer = observer
        for runner in self.sagas.values():
            runner.observer = observer

    def topology_for(self, naming: Naming) -> Topology:
        """Everything the app declares, named and typed by ``naming`` (``self.topology`` is
        ``topology_for(self.naming)``; ``leveret queues migrate --to`` asks for another type).
        """
        topology = naming.base_topology(self._delays)
        for queue, kind, wire_name, options in self._queue_plan:
            topology = topology + naming.handler_topology(queue, kind, wire_name, **options)
        return topology

    def use_url(self, url: str) -> None:
        """Point the app at another broker before it starts (``leveret run --amqp-url``).

        Raises:
            ConfigurationError: the app is running, or the URL scheme is unsupported.
        """
        if self._started:
            raise ConfigurationError("use_url() must be called before the app starts")
        self.url = url
        self.use_transport(transport_from_url(url, header_limits=self.config.header_limits))

    def use_transport(self, transport: Transport) -> None:
        """Replace the app's transport before it starts (every part that publishes uses it).

        Raises:
            ConfigurationError: the app is running.
        """
        if self._started:
            raise ConfigurationError("use_transport() must be called before the app starts")
        self.transport = self.bus.transport = transport
        if self.relay is not None:
            self.relay.use_transport(transport)

    def use_store(self, store: Store) -> None:
        """Replace the app's store before it starts (``leveret sagas --db-url``).

        Its sagas, transactional handlers and outbox use ``store`` from then on; the previous
        store is not closed. Handlers that captured a store themselves keep theirs.

        Raises:
            ConfigurationError: the app is running, or it has neither a saga nor a
                transactional handler (nothing would use a store).
        """
        if self._started:
            raise ConfigurationError("use_store() must be called before the app starts")
        if self.relay is None:
            raise ConfigurationError(
                "this app has no saga and no transactional handler: nothing would use a store"
            )
        self.store = store
        self.relay.use_store(store)
        for runner in self.sagas.values():
            runner.use_store(store)

    @property
    def migrations(self) -> tuple[Migrations, ...]:
        """The components of the app's versioned schema, besides leveret's own tables.

        Raises:
            ConfigurationError: two services declare different schemas under one name.
        """
        return collect_migrations(self.services)

    async def upgrade_db(self) -> list[PendingStep]:
        """Apply the steps the store's schema lacks, under the upgrade lock (``leveret db
        upgrade MODULE:APP``); returns the steps applied, none on a current schema.

        Raises:
            ConfigurationError: the app has no store, or the store's tables are newer than
                this leveret.
            StoreUnreachable: the database server could not be reached.
        """
        if self.store is None:
            raise ConfigurationError("this app has no store: it keeps no tables to upgrade")
        return await self.store.upgrade(self.migrations)

    async def _check_or_upgrade_db(self) -> None:
        assert self.store is not None
        upgrade = self.config.upgrade_db
        if upgrade is None:  # embedded stores upgrade themselves; PostgreSQL is a deploy step
            upgrade = not self.store.url.lower().startswith("postgres")
        if upgrade:
            applied = await self.upgrade_db()
            if applied:
                _log.info("db_upgraded", steps=[str(step) for step in applied])
            return
        pending = await self.store.pending_steps(self.migrations)
        if pending:
            raise SchemaBehind(self.store.url, pending)

    async def __aenter__(self) -> App:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    async def start(self, *, consume: bool = True) -> None:
        """Connect, declare the topology and (unless ``consume=False``) start every consumer.

        Raises:
            BrokerUnreachable: the broker did not answer within the connect deadline.
        """
        if self.store is not None:
            await self._check_or_upgrade_db()
        await self.transport.connect()
        self._started = True
        self.failure, self._halting = None, None
        self._failed.clear()
        if self.relay is not None:
            self.relay.refused = None  # a fresh start tries the pending rows again
        try:
            await self.transport.declare(self.topology)
        except ConfigurationError as exc:
            if "inequivalent" not in str(exc):
                raise
            raise ConfigurationError(
                f"{exc}. The queue exists with another type or other arguments than the app "
                "declares (a queue_type, a delivery limit or a DLQ bound changed): stop the "
                "app's workers and run `leveret queues migrate MODULE:APP`, which re-creates "
                "such queues as declared and keeps their messages"
            ) from None
        for binding in self._retired_bindings:
            # Declaring never removes a binding: a broker that ran a leveret from before the
            # saga trust model still routes timeouts from the public commands exchange.
            await self.transport.unbind(binding)
        if self.breakers is not None:
            await self.breakers.start(self)
        if self.query_transport is not None:
            await self.query_transport.connect()
        if self.relay is not None:
            self._sweeper = asyncio.create_task(self.relay.run(), name="leveret-outbox-sweeper")
        if consume:
            for pipeline in self.pipelines:
                side = self.transport
                if self.query_transport is not None and pipeline.spec.kind is MessageKind.QUERY:
                    side = self.query_transport
                consumer = await side.consume(
                    pipeline.queue, pipeline, prefetch=self._prefetch[pipeline.queue]
                )
                self._consumers.append(consumer)
        if self.observer is not None:
            await self.observer.app_started(self)
        _log.info(
            "app_started",
            url=redact(self.url),
            prefix=self.naming.prefix,
            handlers=len(self.pipelines),
            consuming=consume,
        )

    async def stop(self, *, grace: float | None = None) -> None:
        """Stop consuming, give in-flight handlers ``grace`` seconds, nack the rest, close.

        Handlers still running after the grace period are cancelled; their messages are nacked
        with requeue, never acked.
        """
        if not self._started:
            return
        self._started = False
        if self.observer is not None:
            await self.observer.app_stopping(self)
        wait = self.config.shutdown_grace if grace is None else grace
        if self._halting is not None:
            await asyncio.gather(self._halting, return_exceptions=True)
        await self._cancel_consumers()
        in_flight = {t for p in self.pipelines for t in p.in_flight}
        if in_flight:
            _log.info("draining", in_flight=len(in_flight), grace=wait)
            _, pending = await asyncio.wait(in_flight, timeout=wait)
            for task in pending:
                task.cancel()
            if pending:
                await asyncio.wait(pending, timeout=5.0)
                _log.warning("drain_cancelled_handlers", cancelled=len(pending))
        if self._sweeper is not None:
            self._sweeper.cancel()
            await asyncio.gather(self._sweeper, return_exceptions=True)
            self._sweeper = None
        if self.relay is not None:
            await self.relay.close()
        if self.breakers is not None:
            await self.breakers.stop()
        await self.transport.close()
        if self.query_transport is not None:
            await self.query_transport.close()
        if self.store is not None:
            await self.store.close()
        _log.info("app_stopped")

    async def _cancel_consumers(self) -> None:
        # All at once: on a dead connection each cancel runs into its own deadline, and one
        # after the other a worker whose transport failed took that deadline times the number
        # of queues to exit (found by the fault suite: 21 queues x 5 s).
        consumers, self._consumers = self._consumers, []
        results = await asyncio.gather(*(c.cancel() for c in consumers), return_exceptions=True)
        for consumer, result in zip(consumers, results, strict=True):
            if isinstance(result, Exception):
                _log.warning("consumer_cancel_failed", queue=consumer.queue, error=str(result))
            elif isinstance(result, BaseException):
                raise result

    async def _refused(self, error: AccessRefused) -> None:
        """A publish was refused for lack of permission: fail, and stop consuming at once.

        Retrying cannot help until the broker's permissions or the app's credentials change, so
        the app stops taking messages (what it holds goes back to the queues as it is settled)
        and reports the error once: logged as ``app_failed``, kept in ``failure``, returned by
        ``wait_stopped_or_failed`` and raised by ``run`` (a worker then exits with its
        configuration-error code and is not restarted). Returns once the consumers are
        cancelled, so a delivery nacked afterwards is not handed straight back.
        """
        if self._halting is None:
            self.failure = error
            _log.error(
                "app_failed",
                error=str(error),
                error_type=type(error).__name__,
                exchange=error.exchange,
                user=error.user,
            )
            self._failed.set()
            self._halting = asyncio.ensure_future(self._cancel_consumers())
        await asyncio.shield(self._halting)

    async def run(self, stop: asyncio.Event | None = None) -> None:
        """Start, run until ``stop`` is set or the transport fails for good, then stop.

        Raises:
            BrokerUnreachable: at start-up, or when consumers could not be restored after a
                reconnect (the worker then exits non-zero and its supervisor restarts it).
            AccessRefused: a publish was refused for lack of permission (see ``failure``).
        """
        await self.start()
        try:
            failure = await self.wait_stopped_or_failed(stop or asyncio.Event())
        finally:
            await self.stop()
        if failure is not None:
            raise failure

    async def wait_stopped_or_failed(self, stop: asyncio.Event) -> BaseException | None:
        """Wait (while running) until ``stop`` is set — None — or the app or its transport fails
        for good.

        Returns the failure (``failure`` for a refused publish, else the transport's), so a
        worker can tell it from a failed start.
        """
        waits: list[asyncio.Future[Any]] = [
            asyncio.ensure_future(stop.wait()),
            asyncio.ensure_future(self._failed.wait()),
        ]
        for transport in (self.transport, self.query_transport):
            wait_failed = getattr(transport, "wait_failed", None)
            if wait_failed is not None:
                waits.append(asyncio.ensure_future(wait_failed()))
        try:
            done, _ = await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for waiting in waits:
                waiting.cancel()
        if self.failure is not None:
            return self.failure
        for finished in done:
            if finished is waits[0] or finished is waits[1]:
                continue
            if finished.cancelled():
                return asyncio.CancelledError("the transport's failure watch was cancelled")
            error = finished.exception()
            if error is not None:
                return error
            result = finished.result()
            return result if isinstance(result, BaseException) else RuntimeError(str(result))
        return None

    async def send(self, command: Command, *, timeout: float | None = None, **meta: Any) -> str:
        """Send a command and wait for the broker's confirm, sending it again after a lost
        connection until ``timeout``; see ``Bus.send``."""
        return await self.bus.send(command, timeout=timeout, **meta)

    async def publish(self, event: Event, *, timeout: float | None = None, **meta: Any) -> str:
        """Publish an event (deadline ``timeout``, as for ``send``); see ``Bus.publish``."""
        return await self.bus.publish(event, timeout=timeout, **meta)

    async def _request(
        self, query: Query[R], timeout: float | None, with_meta: bool, meta: dict[str, Any]
    ) -> R | Answer[R]:
        return await self.bus.request(query, timeout=timeout, with_meta=with_meta, **meta)


def _contracts(handlers: Iterable[Any], extra: Iterable[type[Message]]) -> list[type[Message]]:
    types: list[type[Message]] = []
    for spec in handlers:
        types.append(spec.message_type)
        if spec.kind is MessageKind.QUERY:
            types.append(reply_type_of(spec.message_type))
    types.extend(extra)
    return list(dict.fromkeys(types))


def transactional(
    handler: Callable[..., Awaitable[Any]],
    relay: OutboxRelay,
    writer: OutboxWriter,
    consumer: str,
    *,
    keys: SagaKeys | None = None,
) -> Callable[[Message, Context], Awaitable[None]]:
    """Run ``handler`` inside a store transaction with inbox dedupe and an outbox.

    The handler's own SQL (``ctx.tx``), the inbox row and the messages it sends commit together;
    the messages are published after the commit. The transaction runs on the relay's store (the
    one whose outbox the relay publishes), looked up per message so that ``App.use_store`` holds.
    With ``keys`` (the app's, as its sagas use) the ids of those messages are keyed
    (``Signer.emitted_id``): the same on a redelivery, unguessable to whoever chose the incoming
    message's id.
    """

    async def run(message: Message, ctx: Context) -> None:
        signer = None if keys is None else await keys.signer(relay.store)
        for _ in range(5):
            try:
                async with relay.store.transaction() as tx:
                    if not await tx.inbox_add(consumer, ctx.message_id):
                        return
                    ctx.begin_transaction(tx, signer=signer)
                    try:
                        await handler(message, ctx)
                    finally:
                        queued = ctx.take_outbox()
                    rows = [
                        writer.row(
                            m,
                            message_id=mid,
                            correlation_id=ctx.correlation_id,
                            causation_id=ctx.message_id,
                            saga_id=ctx.saga_id,
                        )
                        for m, mid in queued
                    ]
                    await tx.add_outbox(rows)
            except ConcurrencyConflict:
                continue
            await relay.publish(rows)
            return
        raise SagaConflict(f"{consumer}: {ctx.message_id} kept conflicting")

    # The handler's name is in its logs and in the ids of the messages it sends, not "run";
    # its markings (``defer_when_open``) hold for the wrapper the app runs.
    run.__name__, run.__qualname__ = handler.__name__, handler.__qualname__
    run.__dict__.update(getattr(handler, "__dict__", {}))
    return run
