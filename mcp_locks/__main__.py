"""``python -m mcp_locks`` runs the command line (the hook straight, everything else through click)."""

from mcp_locks.cli.entry import main

main()
