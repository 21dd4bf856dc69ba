"""Closing a gRPC client channel without tripping grpc's connectivity poller.

grpc (1.x, Python) watches a channel's state in a background thread once anything subscribes
to it (``Channel.subscribe``, and ``grpc.channel_ready_future``, which every client here uses
to wait for a server). After the last unsubscribe that thread still sits in a watch of up to
0.2 s; closing the channel under it makes the thread raise "Cannot monitor channel state:
Channel closed!", an unhandled exception in a thread (noise in a service, a failure in a test
run that turns those into errors). ``close_channel`` drops the subscriptions, waits for the
poller to stop (at most ``wait_s``), then closes.
"""

from __future__ import annotations

import time

import grpc

_POLL_S = 0.01


def close_channel(channel: grpc.Channel, wait_s: float = 1.0) -> None:
    """Closes ``channel`` once its connectivity poller (if any) has stopped. Thread-safe as
    ``Channel.close`` is; a channel already closed is left as it is."""
    state = getattr(channel, "_connectivity_state", None)  # grpc's private poller state, if this grpc has one
    unsubscribe_all = getattr(channel, "_unsubscribe_all", None)
    if state is not None and callable(unsubscribe_all):
        unsubscribe_all()
        deadline = time.monotonic() + wait_s
        while getattr(state, "polling", False) and time.monotonic() < deadline:
            time.sleep(_POLL_S)
    channel.close()
