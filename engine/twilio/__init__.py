"""Twilio Media Streams: sans-IO protocol, signature validation, the WebSocket server, a simulator."""
