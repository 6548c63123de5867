"""Business bots on the public SDK: business-system events in, cards out, decisions back.

Everything here imports only ``imserver_sdk``, the standard library and the
listed dependencies - never the server (``imserver``) or ``cards`` - so a bot
is exactly what a third party could write (docs/bots.md).
"""
