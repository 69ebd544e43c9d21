"""What a circuit breaker costs on the publish path, and the pipeline with and without one.

1. ``state machine``: one ``try_acquire`` + ``on_success`` pair on a closed breaker.
2. ``middleware``: ``await middleware(out, call_next)`` around a no-op ``call_next``, minus the
   bare ``await call_next(out)``: the cost of the check as a publish pays it.
3. ``app.send``: a full ``app.send`` (encode, envelope, onion) on a transport whose ``publish``
   returns at once, with and without a breaker guarding the destination; and a whole delivery
   through the pipeline's handler (decode, handler, send, ack) on that transport.
4. ``pipeline`` (RabbitMQ): ``bench.pipeline``'s consume -> publish-with-confirm -> ack
   handler, with and without a breaker on its publish, alternating rounds in the same run.

    python -m bench.breaker --iterations 100000 --messages 20000 --rounds 3
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import os
import statistics
import sys
import time
import uuid
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any

import aio_pika
import msgspec

from bench.worker import URL
from bench.workload import PREFETCH, BenchFollowUp, BenchOrder, order
from framework import App, AppConfig, Context, Service
from framework.bus import Outbound
from framework.resilience import Breakers, CircuitBreaker, Downstream
from framework.transport.base import (
    BindingSpec,
    Consumer,
    Delivery,
    DeliveryCallback,
    OutgoingMessage,
    QueueInfo,
    QueueSpec,
    Topology,
    Transport,
)


async def fill(channel: aio_pika.abc.AbstractChannel, exchange: str, key: str, n: int) -> None:
    """Publish n order commands with pipelined confirms (not measured)."""
    ex = await channel.get_exchange(exchange) if exchange else channel.default_exchange
    encoder = msgspec.json.Encoder()
    batch = []
    for i in range(n):
        msg = aio_pika.Message(
            encoder.encode(order(i)),
            message_id=uuid.uuid4().hex,
            type=BenchOrder.__wire_name__,
            content_type="application/json",
            delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
            headers={"leveret-version": 1},
        )
        batch.append(ex.publish(msg, routing_key=key))
        if len(batch) == 1000:
            await asyncio.gather(*batch)
            batch.clear()
    await asyncio.gather(*batch)


def write_json(path: str, report: object) -> None:
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    with open(path, "w") as fh:
        json.dump(report, fh, indent=2)


def per_call_us(run: Callable[[int], float], n: int, repeats: int = 15) -> float:
    """Best-of-``repeats`` microseconds per iteration of ``run(n)`` (which returns seconds).

    The minimum, not the mean: on a shared machine everything else only ever adds time.
    """
    gc.collect()
    return min(run(n) for _ in range(repeats)) / n * 1e6


def bench_state_machine(n: int) -> float:
    breaker = CircuitBreaker("bench")
    try_acquire, on_success = breaker.try_acquire, breaker.on_success
    started = time.perf_counter()
    for _ in range(n):
        permit = try_acquire()
        on_success(permit, 0.001)  # type: ignore[arg-type]  # closed: always a permit
    return time.perf_counter() - started


def _outbound() -> Outbound:
    wire = OutgoingMessage(body=b"{}", message_id="m", type=BenchFollowUp.__wire_name__)
    message = BenchFollowUp(order_id="o", items=[])
    return Outbound(message, wire, "b.commands", BenchFollowUp.__wire_name__, True)


async def _noop(out: Outbound) -> None:
    return None


async def _passthrough(out: Outbound, call_next: Callable[[Outbound], Awaitable[None]]) -> None:
    return await call_next(out)


def _middleware_loop(middleware: Any) -> Callable[[int], Coroutine[Any, Any, float]]:
    async def run(n: int) -> float:
        out = _outbound()
        started = time.perf_counter()
        if middleware is None:
            for _ in range(n):
                await _noop(out)
        else:
            for _ in range(n):
                await middleware(out, _noop)
        return time.perf_counter() - started

    return run


def interleaved_us(
    loops: dict[str, Callable[[int], Coroutine[Any, Any, float]]], n: int, repeats: int = 15
) -> dict[str, float]:
    """Best-of-``repeats`` microseconds per iteration of each loop, the loops run in turn.

    The minimum, not the mean: on a shared machine everything else only ever adds time; and
    in turn, so that a burst of load hits every contender alike.
    """
    gc.collect()
    times: dict[str, list[float]] = {name: [] for name in loops}
    for _ in range(repeats):
        for name, loop in loops.items():
            times[name].append(asyncio.run(loop(n)))
    return {name: min(t) / n * 1e6 for name, t in times.items()}


async def interleaved_us_async(
    loops: dict[str, Callable[[int], Coroutine[Any, Any, float]]], n: int, repeats: int = 15
) -> dict[str, float]:
    """``interleaved_us`` on the running loop (inside a ``python -m bench`` worker)."""
    gc.collect()
    times: dict[str, list[float]] = {name: [] for name in loops}
    for _ in range(repeats):
        for name, loop in loops.items():
            times[name].append(await loop(n))
    return {name: min(t) / n * 1e6 for name, t in times.items()}


class NullTransport(Transport):
    """Accepts every publish at once: isolates the client side of ``app.send``."""

    async def connect(self) -> None: ...
    async def declare(self, topology: Topology) -> None: ...
    async def delete_queue(self, name: str) -> None: ...
    async def close(self) -> None: ...

    async def publish(
        self,
        message: OutgoingMessage,
        *,
        exchange: str,
        routing_key: str,
        mandatory: bool = True,
        timeout: float | None = None,
    ) -> None:
        return None

    async def consume(self, queue: str, callback: DeliveryCallback, *, prefetch: int) -> Consumer:
        raise NotImplementedError

    async def request(
        self, message: OutgoingMessage, *, exchange: str, routing_key: str, timeout: float
    ) -> Delivery:
        raise NotImplementedError

    async def queue_depth(self, name: str) -> int:
        return 0

    async def queue_info(self, name: str) -> QueueInfo:
        return QueueInfo(messages=0, consumers=0)


def _send_loop(with_breaker: bool) -> Callable[[int], Coroutine[Any, Any, float]]:
    async def run(n: int) -> float:
        breakers = Breakers([Downstream("bench")], status=False) if with_breaker else None
        app = App([], transport=NullTransport(), breakers=breakers)
        await app.start(consume=False)
        command = BenchFollowUp(order_id="o-1", items=order(1).items)
        started = time.perf_counter()
        for _ in range(n):
            await app.send(command)
        elapsed = time.perf_counter() - started
        await app.stop()
        return elapsed

    return run


class NullDelivery(Delivery):
    """A delivery whose settling does nothing: ``_handle_loop`` hands the same one over and
    over."""

    __slots__ = ()

    async def ack(self) -> None: ...

    async def nack(self, *, requeue: bool = False) -> None: ...

    def to_outgoing(self, **changes: Any) -> OutgoingMessage:
        raise NotImplementedError


def _handle_loop(with_breaker: bool) -> Callable[[int], Coroutine[Any, Any, float]]:
    """The pipeline's handler (decode, handler, ``ctx.send``, ack) on a null transport: what
    leveret's own code costs per delivery, and what the breakers add to it, without a broker."""

    async def run(n: int) -> float:
        bench = Service("bench")

        @bench.command
        async def place_order(cmd: BenchOrder, ctx: Context) -> None:
            await ctx.send(BenchFollowUp(order_id=cmd.order_id, items=cmd.items))

        breakers = Breakers([Downstream("bench")], status=False) if with_breaker else None
        app = App([bench], transport=NullTransport(), breakers=breakers)
        await app.start(consume=False)
        delivery = NullDelivery(
            body=msgspec.json.encode(order(1)),
            message_id="m-1",
            type=BenchOrder.__wire_name__,
            correlation_id=None,
            content_type="application/json",
            headers={"leveret-version": 1},
            reply_to=None,
            redelivered=False,
            exchange="",
            routing_key="",
            timestamp=None,
        )
        pipeline = app.pipelines[0]
        started = time.perf_counter()
        for _ in range(n):
            await pipeline(delivery)
        elapsed = time.perf_counter() - started
        await app.stop()
        return elapsed

    return run


async def run_pipeline(
    n: int, tag: str, *, with_breaker: bool, url: str = URL
) -> tuple[float, float]:
    """``bench.pipeline``'s leveret contender, optionally with a breaker on its publish.

    Returns messages per second and the process's CPU seconds, both over the consuming only
    (not the fill before it).
    """
    bench = Service("bench")
    done = asyncio.Event()
    count = 0

    @bench.command
    async def place_order(cmd: BenchOrder, ctx: Context) -> None:
        nonlocal count
        await ctx.send(BenchFollowUp(order_id=cmd.order_id, items=cmd.items))
        count += 1
        if count == n:
            done.set()

    prefix = f"bench.{tag}.breaker{int(with_breaker)}"
    # Downstream("bench") gates every bench.* command: the follow-up publish of each message.
    breakers = Breakers([Downstream("bench")], status=False) if with_breaker else None
    app = App(
        [bench], url=url, config=AppConfig(prefix=prefix, prefetch=PREFETCH), breakers=breakers
    )
    sink = f"{prefix}.sink"
    await app.start(consume=False)
    try:
        await app.transport.declare(
            Topology(
                queues=(QueueSpec(sink),),
                bindings=(BindingSpec(sink, app.naming.commands, BenchFollowUp.__wire_name__),),
            )
        )
        conn = await aio_pika.connect(url)
        try:
            await fill(await conn.channel(), app.naming.commands, BenchOrder.__wire_name__, n)
        finally:
            await conn.close()
        pipeline = app.pipelines[0]
        started, cpu = time.perf_counter(), time.process_time()
        consumer = await app.transport.consume(pipeline.queue, pipeline, prefetch=PREFETCH)
        app._consumers.append(consumer)
        await done.wait()
        elapsed, cpu = time.perf_counter() - started, time.process_time() - cpu
        if breakers is not None:
            metrics = breakers["bench"].metrics()
            assert metrics.buffered > 0, metrics
            assert metrics.failed == 0, metrics
        for queue in (sink, pipeline.queue, app.naming.dlq(pipeline.queue)):
            await app.transport.delete_queue(queue)
        return n / elapsed, cpu
    finally:
        await app.stop(grace=1)


async def pipeline_rounds(messages: int, rounds: int) -> dict[str, list[float]]:
    results: dict[str, list[float]] = {"without breaker": [], "with breaker": []}
    for r in range(rounds):
        # Alternate who goes first: a run after a run inherits the broker's fsync backlog.
        order = list(results) if r % 2 == 0 else list(reversed(results))
        for name in order:
            rate, _ = await run_pipeline(
                messages, uuid.uuid4().hex[:6], with_breaker=name == "with breaker"
            )
            results[name].append(rate)
            print(f"round {r + 1}: {name:<16} {rate:8.0f} msgs/s", file=sys.stderr)
    return results


# -- as worker processes of ``python -m bench`` (section "breaker") ------------------------------


async def run_micro(p: Any) -> None:
    """The breaker check per publish: through the breakers minus through an empty middleware."""
    from bench.worker import emit, wait_go

    emit("ready", queues=[])
    await wait_go()
    layer = await interleaved_us_async(
        {
            "empty": _middleware_loop(_passthrough),
            "breaker": _middleware_loop(Breakers([Downstream("bench")]).publish_middleware),
        },
        p.messages,
        p.window,  # repeats
    )
    send = await interleaved_us_async(
        {"without": _send_loop(False), "with": _send_loop(True)}, p.messages // 10, p.window
    )
    emit(
        "result",
        state_machine_us=per_call_us(bench_state_machine, p.messages, p.window),
        breaker_check_us=layer["breaker"] - layer["empty"],
        app_send_overhead_us=send["with"] - send["without"],
    )


async def _run_pipeline_worker(p: Any, with_breaker: bool) -> None:
    from bench.worker import emit, wait_go

    emit("ready", queues=[])
    await wait_go()
    rate, cpu = await run_pipeline(p.messages, p.tag, with_breaker=with_breaker, url=p.url)
    emit("result", rate=rate, cpu_s=cpu)


async def run_without(p: Any) -> None:
    await _run_pipeline_worker(p, with_breaker=False)


async def run_with(p: Any) -> None:
    await _run_pipeline_worker(p, with_breaker=True)


CONTENDERS = {"micro": run_micro, "without breaker": run_without, "with breaker": run_with}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--iterations", type=int, default=100_000)
    parser.add_argument("--messages", type=int, default=20_000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--repeats", type=int, default=25, help="best of this many, per micro")
    parser.add_argument("--no-pipeline", action="store_true", help="skip the RabbitMQ part")
    parser.add_argument("--json", default="bench/results/breaker.json")
    args = parser.parse_args(argv)
    n = args.iterations
    report: dict[str, Any] = {"python": sys.version.split()[0], "iterations": n}

    repeats = args.repeats
    machine = per_call_us(bench_state_machine, n, repeats)
    layer = interleaved_us(
        {
            "bare": _middleware_loop(None),
            "empty": _middleware_loop(_passthrough),
            "other": _middleware_loop(Breakers([Downstream("elsewhere")]).publish_middleware),
            "breaker": _middleware_loop(Breakers([Downstream("bench")]).publish_middleware),
        },
        n,
        repeats,
    )
    send = interleaved_us(
        {"without": _send_loop(False), "with": _send_loop(True)}, n // 10, repeats
    )
    handle = interleaved_us(
        {"without": _handle_loop(False), "with": _handle_loop(True)}, n // 10, repeats
    )
    micro = {
        "state_machine_us": machine,
        "await_bare_us": layer["bare"],
        "empty_middleware_us": layer["empty"],
        "breakers_other_destination_us": layer["other"],
        "breaker_middleware_us": layer["breaker"],
        "breaker_check_us": layer["breaker"] - layer["empty"],
        "app_send_without_us": send["without"],
        "app_send_with_us": send["with"],
        "app_send_overhead_us": send["with"] - send["without"],
        "handle_without_us": handle["without"],
        "handle_with_us": handle["with"],
        "handle_overhead_us": handle["with"] - handle["without"],
    }
    report["micro"] = micro
    print(f"closed breaker, best of {repeats} runs, microseconds per call")
    print(f"  state machine alone (try_acquire + on_success)        {machine:6.3f}")
    print(f"  await call_next(out), no middleware                   {layer['bare']:6.3f}")
    print(f"  through an empty middleware                           {layer['empty']:6.3f}")
    print(f"  through the breakers, destination not guarded         {layer['other']:6.3f}")
    print(f"  through the breakers, guarded destination             {layer['breaker']:6.3f}")
    print(
        f"  => breaker check per publish (guarded - empty)        {micro['breaker_check_us']:6.3f}"
    )
    print(f"  app.send on a null transport, without breakers        {send['without']:6.3f}")
    print(f"                                with a breaker          {send['with']:6.3f}")
    print(f"  one delivery through the handler, without breakers    {handle['without']:6.3f}")
    print(f"                                with a breaker          {handle['with']:6.3f}")

    if not args.no_pipeline:
        results = asyncio.run(pipeline_rounds(args.messages, args.rounds))
        base = statistics.median(results["without breaker"])
        print(f"\npipeline, {args.messages} messages, prefetch {PREFETCH}, median of {args.rounds}")
        summary = {}
        for name, rates in results.items():
            med = statistics.median(rates)
            summary[name] = {"median": med, "runs": rates, "ratio": med / base}
            print(f"  {name:<16} {med:8.0f} msgs/s {med / base:6.3f}x")
        report["pipeline"] = {"messages": args.messages, "prefetch": PREFETCH, "results": summary}
    write_json(args.json, report)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
