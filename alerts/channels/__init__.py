"""Delivery channels behind one interface (`base.Channel`), and the registry that picks one.

A notification row says which address of the user it goes to (its route, the outbox's
`channel` column: `webhook` or `email`); for a route with several channels (webhook: `json`,
`dingtalk`, `wecom`) the user's `notify_format` names the one, else the route's default.

A new channel is one file with a `CHANNEL = Channel(name, route, send)` and one line in
`CHANNELS` below (see docs/alerts.md, "Adding a channel").
"""

from __future__ import annotations

from alerts.channels import dingtalk, email, webhook_json, wecom
from alerts.channels.base import Channel, Context, DeliveryError, Notification

CHANNELS: tuple[Channel, ...] = (webhook_json.CHANNEL, dingtalk.CHANNEL, wecom.CHANNEL,
                                 email.CHANNEL)

__all__ = ["CHANNELS", "Channel", "Context", "DeliveryError", "Notification", "Registry",
           "registry"]


class Registry:
    def __init__(self, channels: tuple[Channel, ...]) -> None:
        self.by_name: dict[tuple[str, str], Channel] = {}
        self.defaults: dict[str, Channel] = {}
        for c in channels:
            if (c.route, c.name) in self.by_name:
                raise ValueError(f"two channels named {c.name!r} on route {c.route!r}")
            self.by_name[(c.route, c.name)] = c
            if c.default:
                if c.route in self.defaults:
                    raise ValueError(f"two default channels on route {c.route!r}")
                self.defaults[c.route] = c

    def routes(self) -> set[str]:
        return {route for route, _ in self.by_name}

    def pick(self, n: Notification) -> Channel:
        """The channel for a claimed notification; DeliveryError (a failed attempt) if none."""
        route = str(n.get("channel"))
        found = self.by_name.get((route, str(n.get("notify_format")))) or self.defaults.get(route)
        if found is None:
            raise DeliveryError(f"no delivery channel for route {route!r}")
        return found


registry = Registry(CHANNELS)
