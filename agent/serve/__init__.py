"""Serving the socket: listening, one task per connection, limits, systemd activation."""
