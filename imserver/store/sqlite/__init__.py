"""The SQLite backend: the embedded default, one file in WAL mode, one writer thread.

``store.py`` holds ``SqliteStore``; the other modules are its parts (mixins and
helpers), one idea each. ``imserver/store/postgres/`` is the same interface
on PostgreSQL for several nodes.
"""
