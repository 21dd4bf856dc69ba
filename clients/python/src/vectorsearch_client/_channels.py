"""Channel helpers shared by ``Client`` and ``AsyncClient``: their TLS credentials, and
closing a sync gRPC channel without tripping grpc's connectivity poller.

Once anything subscribes to a channel's state (``grpc.channel_ready_future``, which
``Client.wait_ready`` uses), grpc watches it from a background thread that, after the last
unsubscribe, still sits in a watch of up to 0.2 s; closing the channel under it makes that
thread raise "Cannot monitor channel state: Channel closed!". ``close_channel`` drops the
subscriptions, waits for the poller to stop (at most ``wait_s``), then closes.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import grpc

_POLL_S = 0.01


def close_channel(channel: grpc.Channel, wait_s: float = 1.0) -> None:
    state = getattr(channel, "_connectivity_state", None)  # grpc's private poller state, if this grpc has one
    unsubscribe_all = getattr(channel, "_unsubscribe_all", None)
    if state is not None and callable(unsubscribe_all):
        unsubscribe_all()
        deadline = time.monotonic() + wait_s
        while getattr(state, "polling", False) and time.monotonic() < deadline:
            time.sleep(_POLL_S)
    channel.close()


def channel_credentials(
    credentials: grpc.ChannelCredentials | None,
    tls_ca: str | os.PathLike[str] | None,
    root_certificates: bytes | None,
    tls_cert: str | os.PathLike[str] | None,
    tls_key: str | os.PathLike[str] | None,
) -> grpc.ChannelCredentials | None:
    """The credentials of a ``Client``/``AsyncClient``: ``credentials`` as given, or TLS
    trusting the PEM CA of the file ``tls_ca`` (or the PEM bytes ``root_certificates``; neither:
    the system's roots when a client certificate is given), presenting the PEM client
    certificate ``tls_cert`` with its key ``tls_key`` when the server requires one; None (plain
    text) when nothing is given. ValueError on a contradictory combination; OSError when a file
    cannot be read."""
    if credentials is not None:
        if tls_ca or root_certificates or tls_cert or tls_key:
            raise ValueError("pass either credentials or tls_ca/root_certificates/tls_cert/tls_key, not both")
        return credentials
    if tls_ca and root_certificates:
        raise ValueError("pass tls_ca (a file) or root_certificates (its bytes), not both")
    if bool(tls_cert) != bool(tls_key):
        raise ValueError("tls_cert and tls_key go together")
    if not (tls_ca or root_certificates or tls_cert):
        return None
    roots = Path(tls_ca).read_bytes() if tls_ca else root_certificates
    chain = Path(tls_cert).read_bytes() if tls_cert else None
    key = Path(tls_key).read_bytes() if tls_key else None
    return grpc.ssl_channel_credentials(root_certificates=roots, private_key=key, certificate_chain=chain)


def tls_options(tls_server_name: str | None) -> list[tuple[str, str]]:
    """``tls_server_name``: the name the server's certificate must carry, when it is not the
    address's host (e.g. through a port-forward to 127.0.0.1)."""
    return [("grpc.ssl_target_name_override", tls_server_name)] if tls_server_name else []
