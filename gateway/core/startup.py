"""Start-up failures the command line reports in a line or two, with no traceback: what could not start, the
setting behind it (whose source only the command line knows) and what to do."""

from __future__ import annotations

import errno
import socket

KeyPath = tuple[str, ...]


class CannotListen(OSError):
    """A server of the gateway (its listener, an embedded KernieGen) could not bind its address."""

    def __init__(
        self, what: str, host: str, port: int, error: OSError, *, port_key: KeyPath, host_key: KeyPath
    ) -> None:
        self.what = what
        self.host = host
        self.port = port
        self.error = error
        self.address_in_use = error.errno == errno.EADDRINUSE
        # The setting to change: the port when it is taken or privileged, else the address itself.
        self.key = port_key if error.errno in (errno.EADDRINUSE, errno.EACCES) else host_key
        super().__init__(error.errno, f"{what} cannot listen on {self.address}: {self.reason}")

    def __str__(self) -> str:
        return str(self.strerror)  # the whole message, without OSError's "[Errno 98]"

    @property
    def address(self) -> str:
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"

    @property
    def reason(self) -> str:
        if self.error.errno == errno.EADDRINUSE:
            return "the address is already in use (another process listens there)"
        if self.error.errno == errno.EACCES:
            return "permission denied (ports below 1024 need privileges)"
        if self.error.errno == errno.EADDRNOTAVAIL or isinstance(self.error, socket.gaierror):
            return "no network interface of this host has that address"
        return self.error.strerror or str(self.error)


def is_bind_error(error: OSError) -> bool:
    """An OSError of a socket's bind or of resolving its host, not of a file (those name their file)."""
    return error.filename is None
