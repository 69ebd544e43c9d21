"""The queues an app owns on RabbitMQ: re-creating them with another type or other arguments.

``leveret queues migrate MODULE:APP [--to quorum|classic]`` (``framework.queues.cli``) runs
``migrate``: see ``framework.queues.migrate``.
"""

from framework.queues.migrate import HOLDING_SUFFIX, Migrated, migrate

__all__ = ["HOLDING_SUFFIX", "Migrated", "migrate"]
