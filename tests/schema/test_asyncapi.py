"""``leveret asyncapi``: documents valid against the official AsyncAPI 3.0 JSON Schema."""

from __future__ import annotations

import copy
import json
import sys
from functools import cache
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml

from framework import App, Context, Service
from framework.cli import main
from framework.schema import asyncapi_document
from handlers.app import build_app
from tests.unit.test_upcasting import Ship, ShipV1, ship_v1_to_v2, ship_v2_to_v3

SCHEMA = Path(__file__).resolve().parents[1] / "data" / "asyncapi" / "asyncapi-3.0.0.schema.json"


@cache
def validator() -> jsonschema.protocols.Validator:
    schema = json.loads(SCHEMA.read_text())
    cls = jsonschema.validators.validator_for(schema)
    cls.check_schema(schema)
    return cls(schema)


def errors(document: dict[str, Any]) -> list[str]:
    found = validator().iter_errors(document)
    return [f"{'/'.join(map(str, e.absolute_path))}: {e.message}" for e in found]


def resolve(document: dict[str, Any], ref: str) -> Any:
    node: Any = document
    for part in ref.removeprefix("#/").split("/"):
        node = node[part.replace("~1", "/").replace("~0", "~")]
    return node


def all_refs(node: Any) -> list[str]:
    if isinstance(node, dict):
        found = [node["$ref"]] if isinstance(node.get("$ref"), str) else []
        return found + [r for v in node.values() for r in all_refs(v)]
    if isinstance(node, list):
        return [r for v in node for r in all_refs(v)]
    return []


def test_shop_document_is_valid_asyncapi_3() -> None:
    """The shop's document passes the official schema and every $ref in it resolves."""
    app = build_app()
    document = asyncapi_document(app, server_url="amqp://guest:secret@rabbit:5672/shop")
    assert errors(document) == []
    for ref in all_refs(document):
        resolve(document, ref)
    assert "secret" not in json.dumps(document)
    assert document["servers"]["rabbitmq"] == {
        "host": "rabbit:5672",
        "protocol": "amqp",
        "description": "RabbitMQ, vhost 'shop'",
    }


def test_validation_is_not_vacuous() -> None:
    """The validator rejects a document that breaks the spec (no info.version, bad binding)."""
    app = build_app()
    document = copy.deepcopy(asyncapi_document(app))
    del document["info"]["version"]
    channel = document["channels"]["shop.commands:orders.place_order"]
    channel["bindings"]["amqp"]["exchange"]["type"] = "round-robin"
    found = errors(document)
    assert any("'version' is a required property" in e for e in found)
    assert len(found) >= 2


def test_shop_document_describes_exchanges_queues_operations_and_messages() -> None:
    """Routing-key channels, queue channels, send/receive per service, payloads, bindings."""
    app = build_app()
    document = asyncapi_document(app)
    channels, operations = document["channels"], document["operations"]
    command = channels["shop.commands:orders.place_order"]
    assert command["address"] == "orders.place_order"
    assert command["bindings"]["amqp"]["is"] == "routingKey"
    assert command["bindings"]["amqp"]["exchange"]["type"] == "direct"
    assert channels["shop.events:orders.order_placed"]["bindings"]["amqp"]["exchange"]["type"] == (
        "topic"
    )
    queue = channels["shop.orders.orders.place_order"]
    assert queue["bindings"]["amqp"]["queue"]["name"] == "shop.orders.orders.place_order"
    receive = operations["orders.receives.orders.place_order"]
    assert receive["action"] == "receive"
    assert receive["channel"] == {"$ref": "#/channels/shop.orders.orders.place_order"}
    send = operations["orders.publishes.orders.order_placed.v1"]
    assert send["action"] == "send"
    assert send["bindings"]["amqp"]["mandatory"] is False
    assert operations["orders.sends.inventory.reserve_inventory.v1"]["bindings"]["amqp"][
        "mandatory"
    ]
    query = operations["order_view.receives.orders.get_order"]
    assert query["reply"]["messages"] == [
        {"$ref": "#/channels/amq.rabbitmq.reply-to/messages/orders.order_view.v1"}
    ]
    message = document["components"]["messages"]["orders.place_order.v1"]
    assert message["bindings"]["amqp"]["messageType"] == "orders.place_order"
    payload = resolve(document, message["payload"]["$ref"])
    assert payload["required"] == ["order_id", "customer_id", "items", "address"]
    assert resolve(document, payload["properties"]["items"]["items"]["$ref"])["title"] == "LineItem"
    senders = {name.split(".")[0] for name, op in operations.items() if op["action"] == "send"}
    assert senders == {"orders", "inventory", "payment", "shipping", "notifications"}
    receivers = {name.split(".")[0] for name, op in operations.items() if op["action"] == "receive"}
    assert receivers == senders | {"order_view"}


def test_saga_timeouts_are_internal_with_no_public_exchange_channel() -> None:
    """A saga's timeout has no channel on the commands exchange and nothing sends it there; its
    queue and receive operation are marked internal, reachable only through the delay tier."""
    app = build_app()
    document = asyncapi_document(app)
    assert errors(document) == []
    channels, operations = document["channels"], document["operations"]
    assert not [name for name in channels if name.endswith(":saga.order.timeout")]
    for operation in operations.values():
        if operation["action"] == "send":
            assert "timeout" not in operation["channel"]["$ref"]
    queue = channels["shop.orders.saga.order.timeout"]
    assert queue["x-leveret-internal"] is True
    assert queue["description"].startswith("Internal: not bound to shop.commands")
    assert "shop.retry" in queue["description"]
    assert "Bound to" not in queue["description"]
    assert sorted(queue["messages"]) == ["saga.order.timeout.v1"]
    assert operations["orders.receives.saga.order.timeout"]["x-leveret-internal"] is True
    public = channels["shop.orders.orders.place_order"]
    assert "x-leveret-internal" not in public
    assert public["description"].startswith(
        "Bound to shop.commands with routing key 'orders.place_order'."
    )
    assert "x-leveret-internal" not in operations["orders.receives.orders.place_order"]


def test_versions_and_upcasters_show_on_the_handler_queue() -> None:
    """A handler's queue channel lists every version it reads through upcasters."""
    shipping = Service("shipping")

    @shipping.command
    async def ship(cmd: Ship, ctx: Context) -> None: ...

    app = App([shipping], contracts=[ShipV1], upcasters=[ship_v1_to_v2, ship_v2_to_v3])
    document = asyncapi_document(app)
    assert errors(document) == []
    queue = document["channels"]["leveret.shipping.ship.ship_parcel"]
    assert sorted(queue["messages"]) == [
        "ship.ship_parcel.v1",
        "ship.ship_parcel.v2",
        "ship.ship_parcel.v3",
    ]
    assert "servers" not in document  # memory:// has no server to describe


@pytest.mark.parametrize(
    ("name", "load"), [("shop.yaml", yaml.safe_load), ("shop.json", json.loads)]
)
def test_cli_writes_valid_yaml_and_json(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], name: str, load: Any
) -> None:
    """`leveret asyncapi handlers.app:app -o FILE` picks the format from the extension."""
    target = tmp_path / name
    assert main(["asyncapi", "handlers.app:app", "-o", str(target), "--title", "Shop"]) == 0
    document = load(target.read_text())
    assert document["info"]["title"] == "Shop"
    assert errors(document) == []


def test_cli_json_to_stdout(capsys: pytest.CaptureFixture[str]) -> None:
    """Without -o the document goes to standard output, JSON by default."""
    assert main(["asyncapi", "handlers.app:app", "--api-version", "2.1.0"]) == 0
    document = json.loads(capsys.readouterr().out)
    assert document["asyncapi"] == "3.0.0"
    assert document["info"]["version"] == "2.1.0"


def test_yaml_without_pyyaml_says_what_to_install(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """PyYAML is optional: --format yaml without it exits 2 naming the extra."""
    monkeypatch.setitem(sys.modules, "yaml", None)
    assert main(["asyncapi", "handlers.app:app", "--format", "yaml"]) == 2
    assert "pip install 'leveret[yaml]'" in capsys.readouterr().err
