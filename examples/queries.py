"""Request/reply: a query handler answers, and many queries run concurrently from one caller."""

from __future__ import annotations

import asyncio
import os

from framework import App, Query, QueryContext, Reply, Service


class Stock(Reply):
    __wire_name__ = "catalog.stock"

    sku: str
    units: int


class GetStock(Query[Stock]):
    __wire_name__ = "catalog.get_stock"

    sku: str


catalog = Service("catalog")
STOCK = {"apple": 12, "pear": 3}


@catalog.query
async def get_stock(query: GetStock, ctx: QueryContext) -> Stock:
    return Stock(sku=query.sku, units=STOCK.get(query.sku, 0))


app = App([catalog], url=os.environ.get("LEVERET_URL", "memory://"))


async def main() -> None:
    async with app:
        replies = await asyncio.gather(*(app.request(GetStock(sku=s)) for s in ("apple", "pear")))
        for reply in replies:
            print(f"{reply.sku}: {reply.units} units")


if __name__ == "__main__":
    asyncio.run(main())
