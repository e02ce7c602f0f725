"""The commands that talk to a running server over REST: ``exec``, ``status``, ``locks``, ``audit``, ``webhooks``.

They load the REST client and never a server module (import-linter keeps it so), which keeps them quick to
start: a host hook may run one per edit. ``mcp_locks.cli.main`` imports each module when its command runs.
"""
