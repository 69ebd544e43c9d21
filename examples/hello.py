"""The smallest leveret app: a contract, a handler, and a command sent to it.

Run it with ``python examples/hello.py`` (in-process broker) or point it at RabbitMQ with
``LEVERET_URL=amqp://guest:guest@127.0.0.1:5672/ python examples/hello.py``.
Serve it with workers: ``leveret run examples.hello:app --workers 2 --amqp-url amqp://...``.
"""

from __future__ import annotations

import asyncio
import os

from framework import App, Command, Context, Event, Service


class Greet(Command):
    __wire_name__ = "hello.greet"
    __wire_version__ = 1

    name: str


class Greeted(Event):
    __wire_name__ = "hello.greeted"

    greeting: str


hello = Service("hello")
done = asyncio.Event()


@hello.command
async def greet(cmd: Greet, ctx: Context) -> None:
    ctx.log.info("greeting", name=cmd.name)
    await ctx.publish(Greeted(greeting=f"Hello, {cmd.name}!"))


@hello.event
async def print_greeting(evt: Greeted, ctx: Context) -> None:
    print(evt.greeting, f"(correlation {ctx.correlation_id})")
    done.set()


app = App([hello], url=os.environ.get("LEVERET_URL", "memory://"), config=None)


async def main() -> None:
    async with app:
        await app.send(Greet(name="leveret"))
        async with asyncio.timeout(10):
            await done.wait()


if __name__ == "__main__":
    asyncio.run(main())
