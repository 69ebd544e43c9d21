"""The exit codes of every ``leveret`` command and of a worker process, defined once.

* ``EXIT_OK`` (0): done; a check passed; a worker drained cleanly after SIGTERM/SIGINT.
* ``EXIT_FAILED`` (1): a check failed (``contracts check`` found a break, ``db check`` found
  missing steps, ``status`` is not ready), nothing matched (no saga with that id, no dead letter
  selected, no worker answered), an action was refused; a worker failed and is restarted.
* ``EXIT_USAGE`` (2): a usage or configuration error: a bad ``MODULE:APP``, an unusable URL, a
  ``memory://`` app given to a command that needs RabbitMQ, credentials the broker refused. Running
  it again unchanged gives the same answer; the message says what to change.
* ``EXIT_UNREACHABLE`` (3): the broker or the database could not be reached in time (or a SQLite
  file a reading command was pointed at does not exist).
* ``EXIT_INTERRUPTED`` (4): the connection failed partway: a worker lost its broker for good
  while serving (the supervisor restarts it), a DLQ could not be read whole (what was read is
  printed).

This module imports nothing, so that ``framework.worker`` can use it without loading the
commands.
"""

from __future__ import annotations

__all__ = ["EXIT_FAILED", "EXIT_INTERRUPTED", "EXIT_OK", "EXIT_UNREACHABLE", "EXIT_USAGE"]

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_USAGE = 2
EXIT_UNREACHABLE = 3
EXIT_INTERRUPTED = 4
