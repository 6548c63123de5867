"""The WebSocket gateway: handshake, authentication, sessions, backpressure."""
