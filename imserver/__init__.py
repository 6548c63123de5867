"""imserver — instant messaging and message-card server for government office work."""

__version__ = "0.1.0"
