"""Sans-I/O protocol: frame codecs, request validation, frame builders.

Nothing here touches a socket or awaits; every function takes values and
returns values, so the whole protocol is unit-tested in microseconds.
"""
