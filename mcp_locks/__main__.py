"""``python -m mcp_locks`` runs the command line."""

from ._cli import main

main()
