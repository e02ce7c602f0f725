"""The ``mcp-locks`` command line: ``main`` (server commands), ``remote`` (commands that talk to a running server)."""
