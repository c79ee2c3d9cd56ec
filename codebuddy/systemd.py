"""
systemd integration without C extensions: ``sd_notify`` over the notification socket.

Twisted has no sd_notify of its own. The protocol is one datagram to the UNIX socket
named by ``$NOTIFY_SOCKET`` (``@`` means the abstract namespace).
"""

from __future__ import annotations

import os
import socket


def sd_notify(state: bytes, environ: dict[str, str] | None = None) -> bool:
    """Send ``state`` (e.g. ``b"READY=1"``) to systemd; False when not run by systemd."""
    env = os.environ if environ is None else environ
    path = env.get("NOTIFY_SOCKET")
    if not path:
        return False
    if path.startswith("@"):
        path = "\0" + path[1:]
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
            sock.sendto(state, path)
    except OSError:
        return False
    return True
