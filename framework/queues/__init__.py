"""The queues an app owns on RabbitMQ: re-creating them with another type or other arguments,
and deleting them.

``leveret queues migrate MODULE:APP [--to quorum|classic]`` (``framework.cli.queues``) runs
``migrate``: see ``framework.queues.migrate``. ``delete_topology`` removes an app's queues and
exchanges (``python -m examples.shop`` does at the end of a run): see
``framework.queues.teardown``.
"""

from framework.queues.migrate import HOLDING_SUFFIX, Migrated, migrate
from framework.queues.teardown import Deleted, delete_topology, owned_topology

__all__ = ["HOLDING_SUFFIX", "Deleted", "Migrated", "delete_topology", "migrate", "owned_topology"]
