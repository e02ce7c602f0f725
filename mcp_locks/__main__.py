"""``python -m mcp_locks`` runs the command line."""

from mcp_locks.cli.main import main

main()
