"""The PostgreSQL store (``asyncpg``, pooled): the backend for several nodes sharing one database.

``PostgresStore`` implements every interface the SQLite store does; see
``store.py`` for the lifecycle, ``writer.py`` for group commit and
``schema.py`` for the migrations.
"""

from imserver.store.postgres.store import PostgresStore

__all__ = ["PostgresStore"]
