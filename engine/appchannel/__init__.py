"""The application channel: a WebSocket where an application gets its calls' events and plays audio into them.

``messages`` is the wire schema (msgspec Structs), ``hub`` routes events to connections and commands to
calls (no I/O), ``server`` is the Trio service (its own listener, authentication before the upgrade).
See docs/app-channel.md.
"""

from engine.appchannel.hub import AppHub, Subscriber
from engine.appchannel.server import AppChannelServer

__all__ = ["AppChannelServer", "AppHub", "Subscriber"]
