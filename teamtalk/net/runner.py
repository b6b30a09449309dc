"""Run one or more roles until SIGINT or SIGTERM, then shut down in order.

The shutdown sequence is fixed: every role stops accepting, in-flight work
gets ``grace`` seconds to finish (DB writes run in worker threads that are
never abandoned, so a cancelled write still completes), then everything is
cancelled, connections close, and storage is closed last by its owner.
"""

from __future__ import annotations

import logging
import signal
from typing import Protocol, Sequence

import trio

logger = logging.getLogger(__name__)


class Role(Protocol):
    name: str

    async def run(self, *, task_status=trio.TASK_STATUS_IGNORED) -> None: ...

    def stop_accepting(self) -> None: ...

    async def drain(self) -> None: ...


async def run_roles(roles: Sequence[Role], *, grace: float = 5.0,
                    stop: trio.Event | None = None,
                    task_status=trio.TASK_STATUS_IGNORED) -> None:
    """Start ``roles`` in order, wait for a signal (or ``stop``), shut down.

    Returns normally after a clean shutdown, so the process exits 0.
    """
    async with trio.open_nursery() as nursery:
        for role in roles:
            await nursery.start(role.run)
        logger.info("started %s", ", ".join(role.name for role in roles))
        task_status.started()

        await _wait_for_stop(stop)

        logger.info("shutting down: no new connections, %.1f s grace for in-flight work", grace)
        for role in reversed(roles):
            role.stop_accepting()
        with trio.move_on_after(grace) as grace_scope:
            for role in reversed(roles):
                await role.drain()
        if grace_scope.cancelled_caught:
            logger.warning("grace period of %.1f s ended with work still in flight", grace)
        nursery.cancel_scope.cancel()
    logger.info("stopped")


async def _wait_for_stop(stop: trio.Event | None) -> None:
    with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
        async with trio.open_nursery() as nursery:
            async def on_signal():
                async for signum in signals:
                    logger.info("received %s", signal.Signals(signum).name)
                    break
                nursery.cancel_scope.cancel()

            async def on_event():
                await stop.wait()
                nursery.cancel_scope.cancel()

            nursery.start_soon(on_signal)
            if stop is not None:
                nursery.start_soon(on_event)
