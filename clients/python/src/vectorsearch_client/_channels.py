"""Closing a sync gRPC channel without tripping grpc's connectivity poller.

Once anything subscribes to a channel's state (``grpc.channel_ready_future``, which
``Client.wait_ready`` uses), grpc watches it from a background thread that, after the last
unsubscribe, still sits in a watch of up to 0.2 s; closing the channel under it makes that
thread raise "Cannot monitor channel state: Channel closed!". ``close_channel`` drops the
subscriptions, waits for the poller to stop (at most ``wait_s``), then closes.
"""

from __future__ import annotations

import time

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
