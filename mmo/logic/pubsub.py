"""Push-pull and pub-sub with a service's instances.

* :meth:`PubSub.push`: a one-way call to one instance of a service (at most once),
  through one PUSH socket connected to every instance's ``pull`` endpoint.
* :meth:`PubSub.subscribe`: a callback for the events a service's instances publish
  under a topic prefix, through one SUB socket per service connected to every
  instance's ``pub`` endpoint; :meth:`Subscription.unsubscribe` ends it.

The sockets follow the registry like every link (:mod:`mmo.logic.links`).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import zmq
from twisted.logger import Logger

from mmo.errors import BadRequest, NoLiveInstance
from mmo.logic.links import Pools
from mmo.wire import WireError, decode_value, encode, encode_value
from mmo.wire.gen.mmo.ttypes import Header, Kind
from mmo.zmq import ZmqContext, ZmqSocket

__all__ = ["Feed", "PubSub", "Subscription"]

log = Logger()

#: Pushes queued for a service before :meth:`PubSub.push` refuses more.
PUSH_QUEUE = 10000


class Feed:
    """One service's events: the SUB socket and the subscriptions to them.

    Args:
        service: the service's name.
    """

    def __init__(self, service: str) -> None:
        self.service = service
        self.socket: ZmqSocket | None = None
        self.subscriptions: list[Subscription] = []

    def received(self, frames: list[bytes]) -> None:
        """One event ``[topic, header, payload]``: to every subscription whose topic it
        starts with (a failing callback is logged and the others still run)."""
        try:
            topic = frames[0].decode()
            payload = decode_value(frames[2])
        except (WireError, IndexError, UnicodeDecodeError) as e:
            log.warn("event: bad message from {service}: {e}", service=self.service, e=e)
            return
        for subscription in list(self.subscriptions):
            if topic.startswith(subscription.topic):
                try:
                    subscription.callback(topic, payload)
                except Exception:
                    log.failure("subscriber of {topic} failed", topic=topic)


class Subscription:
    """One ``subscribe`` of a callback to a topic prefix; :meth:`unsubscribe` ends it."""

    def __init__(self, feed: Feed, topic: str, callback: Callable[[str, Any], Any]) -> None:
        self.feed = feed
        self.topic = topic
        self.callback = callback

    def unsubscribe(self) -> None:
        """Stop receiving (the topic's filter is removed when no one else uses it)."""
        feed = self.feed
        if self in feed.subscriptions:
            feed.subscriptions.remove(self)
            if feed.socket is not None and not any(
                s.topic == self.topic for s in feed.subscriptions
            ):
                feed.socket.socket.unsubscribe(self.topic.encode())


class PubSub:
    """This process's pushes to services and subscriptions to their events.

    Args:
        context: the process's ZeroMQ context.
        pools: the process's links (they keep the sockets connected to every instance).
        caller_id: how this process names itself in pushes.
        caller_role: the role it states in pushes.
    """

    def __init__(
        self, context: ZmqContext, pools: Pools[Any], *, caller_id: str, caller_role: str
    ) -> None:
        self.context = context
        self.pools = pools
        self.caller_id = caller_id
        self.caller_role = caller_role
        self._feeds: dict[str, Feed] = {}

    def push(self, service: str, method: str, kwargs: dict[str, Any] | None = None) -> None:
        """Send a one-way call to one instance of ``service`` (at most once).

        Raises:
            NoLiveInstance: no instance of the service is known, or its queue is full.
            BadRequest: the arguments cannot be encoded.
        """
        pool = self.pools.pool(service)
        sock = pool.sockets.get("pull")
        if sock is None:
            sock = self.context.socket(zmq.PUSH, options={zmq.SNDHWM: PUSH_QUEUE})
            self.pools.share(service, "pull", sock)
        if not pool.endpoints.get("pull"):
            raise NoLiveInstance(f"no live instance of service {service!r}")
        try:
            body = encode_value(kwargs or {})
        except WireError as e:
            raise BadRequest(f"{service}.{method}: {e}") from e
        header = Header(
            kind=Kind.PUSH,
            service_name=service,
            method=method,
            caller=self.caller_id,
            caller_role=self.caller_role,
        )
        try:
            sock.send([encode(header), body])
        except zmq.Again as e:
            raise NoLiveInstance(f"service {service!r} is not taking pushes (queue full)") from e

    def subscribe(
        self, service: str, topic: str, callback: Callable[[str, Any], Any]
    ) -> Subscription:
        """Call ``callback(topic, payload)`` for each event of ``service`` whose topic
        starts with ``topic`` (``""`` for all)."""
        pool = self.pools.pool(service)
        feed = self._feeds.get(service)
        if feed is None or pool.sockets.get("pub") is None:
            # First use, or the links were closed since: a new socket.
            feed = self._feeds[service] = Feed(service)
            feed.socket = self.context.socket(zmq.SUB, feed.received)
            self.pools.share(service, "pub", feed.socket)
        assert feed.socket is not None
        if not any(s.topic == topic for s in feed.subscriptions):
            # One filter per topic: ZeroMQ counts them, and unsubscribe removes one.
            feed.socket.socket.subscribe(topic.encode())
        subscription = Subscription(feed, topic, callback)
        feed.subscriptions.append(subscription)
        return subscription

    def close(self) -> None:
        """Forget every subscription (the sockets are closed with the links)."""
        self._feeds.clear()
