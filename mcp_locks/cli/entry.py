"""The ``mcp-locks`` console script: ``mcp-locks hook HOST`` straight to the hook, everything else to click.

A host runs ``mcp-locks hook HOST`` before every edit, so that one command skips click (~20 ms to import) and
everything it would load: with exactly one argument after ``hook``, and that argument one of the hosts, the
hook runs here. Any other shape (no host, an unknown one, ``--help``, extra arguments or options) goes to
the click command line (:mod:`mcp_locks.cli.main`), which answers it as it always has: the same usage
errors, texts and exit codes, since they are click's own.
"""

from __future__ import annotations

import sys

__all__ = ["answer_hook", "main"]


def main() -> None:
    """Run ``mcp-locks`` with ``sys.argv`` (the console script's entry point)."""
    args = sys.argv[1:]
    if len(args) == 2 and args[0] == "hook":
        from mcp_locks.hooks.payload import HOSTS  # only here: --version and the rest need none of the hooks

        if args[1] in HOSTS:
            sys.exit(answer_hook(args[1]))
    from mcp_locks.cli.main import main as command_line

    command_line()


def answer_hook(host: str) -> int:
    """Answer ``host``'s hook input on stdin (on stdout, notes on stderr); the exit code to end with."""
    from mcp_locks.hooks.payload import MAX_INPUT
    from mcp_locks.hooks.run import run_hook

    data = sys.stdin.buffer.read(MAX_INPUT + 1)
    text = data[:MAX_INPUT].decode("utf-8", errors="replace")  # cut short, it is no JSON: refused as unreadable
    reply = run_hook(host, text)
    if reply.stderr:
        print(reply.stderr, file=sys.stderr, flush=True)
    print(reply.stdout, flush=True)
    return reply.exit_code
