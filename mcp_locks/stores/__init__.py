"""Where workspace state is kept: one :class:`~mcp_locks.stores.base.Store` protocol; memory, SQLite and PostgreSQL.

Stores persist what the core decided; they make no lock decision.
"""
