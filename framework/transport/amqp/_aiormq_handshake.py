"""What the broker said when it refused a connection: a patch of aiormq's private handshake.

Tested against aiormq 7.2.x (7.2.4): see ``_compat.TESTED``. RabbitMQ refuses a vhost in answer
to ``connection.open`` with ``connection.close`` (530 ``NOT_ALLOWED - vhost X not found``, or
``NOT_ALLOWED - access to vhost 'X' refused for user 'u'``). aiormq's handshake step
(``Connection._rpc``, a static method) expects ``open-ok`` and raises ``InvalidFrameError``
quoting only the frame's repr, so the reply code and text are lost and a missing vhost cannot be
told from a missing permission. ``install()`` wraps that step: when the unexpected answer was a
``connection.close``, the error raised is aiormq's own for its reply code (``ConnectionNotAllowed``
with the broker's text, as aiormq raises for a close after the handshake). Anything else passes
unchanged. Should a later aiormq rename the step, nothing breaks: the two vhost refusals are
reported together (``BrokerAccessDenied.cause == "vhost_refused"``).
"""

from __future__ import annotations

from typing import Any

from aiormq import connection as aiormq_connection
from aiormq.exceptions import InvalidFrameError
from pamqp import commands

__all__ = ["install"]

_MARK = "_leveret_handshake"


class _LastFrame:
    """A frame receiver that remembers the last frame read through it."""

    def __init__(self, receiver: Any) -> None:
        self._receiver = receiver
        self.frame: object = None

    async def get_frame(self) -> Any:
        received = await self._receiver.get_frame()
        self.frame = received[2]  # (weight, channel, frame)
        return received


def install() -> bool:
    """Wrap aiormq's handshake step (once); False when this aiormq has none to wrap."""
    cls = aiormq_connection.Connection
    original = getattr(cls, "_rpc", None)
    if original is None or not hasattr(aiormq_connection, "exception_by_code"):
        return False
    if getattr(original, _MARK, False):
        return True

    async def rpc(
        request: Any, writer: Any, frame_receiver: Any, wait_response: bool = True
    ) -> Any:
        seen = _LastFrame(frame_receiver)
        try:
            return await original(
                request, writer=writer, frame_receiver=seen, wait_response=wait_response
            )
        except InvalidFrameError as exc:
            if isinstance(seen.frame, commands.Connection.Close):
                raise aiormq_connection.exception_by_code(seen.frame) from exc
            raise

    setattr(rpc, _MARK, True)
    cls._rpc = staticmethod(rpc)  # type: ignore[method-assign]  # the patch is the point
    return True
