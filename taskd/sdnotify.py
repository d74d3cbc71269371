"""systemd's notify protocol without a dependency: READY=1, STATUS=, WATCHDOG=1 and STOPPING=1 as
datagrams on the unix socket named by $NOTIFY_SOCKET (a path, or `@name` in the abstract namespace)."""

from __future__ import annotations

import logging
import os
import socket
from collections.abc import MutableMapping

from taskd.loops import every

log = logging.getLogger("taskd.systemd")


class Notifier:
    """Sends notify messages to systemd; does nothing when taskd was not started by a Type=notify unit."""

    def __init__(self, address: str | None, watchdog_usec: int | None = None) -> None:
        self.address = address
        self.watchdog_usec = watchdog_usec

    @classmethod
    def from_env(cls, environ: MutableMapping[str, str] | None = None) -> Notifier:
        """Read NOTIFY_SOCKET and WATCHDOG_USEC, and remove them so child processes do not notify as us."""
        environ = os.environ if environ is None else environ
        address = environ.pop("NOTIFY_SOCKET", None) or None
        raw_usec = environ.pop("WATCHDOG_USEC", None)
        watchdog_pid = environ.pop("WATCHDOG_PID", None)
        usec = int(raw_usec) if raw_usec and raw_usec.isdigit() and int(raw_usec) > 0 else None
        if watchdog_pid and watchdog_pid != str(os.getpid()):
            usec = None  # the watchdog is meant for another process
        return cls(address, usec)

    @property
    def watchdog_interval(self) -> float | None:
        """Seconds between WATCHDOG=1 pings: half of WatchdogSec, as sd_watchdog_enabled(3) advises."""
        return self.watchdog_usec / 2_000_000 if self.watchdog_usec else None

    def send(self, *fields: str) -> bool:
        """Send `KEY=value` fields as one datagram; False when there is no socket or it failed."""
        if not self.address:
            return False
        target = "\0" + self.address[1:] if self.address.startswith("@") else self.address
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
                sock.connect(target)
                sock.sendall("\n".join(fields).encode())
        except OSError as exc:
            log.warning("could not notify systemd at %s: %s", self.address, exc)
            return False
        return True

    def ready(self, status: str) -> bool:
        """Tell systemd the service is up."""
        return self.send("READY=1", f"STATUS={status}")

    def status(self, status: str) -> bool:
        """Update the status line `systemctl status` shows."""
        return self.send(f"STATUS={status}")

    def stopping(self, status: str) -> bool:
        """Tell systemd the service is shutting down."""
        return self.send("STOPPING=1", f"STATUS={status}")

    async def watchdog(self) -> None:
        """Ping the watchdog until cancelled; from the event loop, so a blocked loop misses pings."""
        interval = self.watchdog_interval
        if interval is None or not self.address:
            return
        await every(interval, self._ping_watchdog, name="systemd watchdog ping", logger=log)

    async def _ping_watchdog(self) -> None:
        self.send("WATCHDOG=1")
