"""Host hooks: ``mcp-locks hook HOST`` locks the files an agent's tool call is about to write.

Client side only: this package imports :mod:`mcp_locks.core`, :mod:`mcp_locks.client` and the standard
library, never a server module (an import-linter contract checks it). The modules, in the order a hook
call passes through them:

* :mod:`~mcp_locks.hooks.payload` reads the host's stdin JSON: event, session;
* :mod:`~mcp_locks.hooks.paths` finds the files the call writes;
* :mod:`~mcp_locks.hooks.config` finds the project root and its ``.mcp-locks.toml`` (a stable API, shared
  with ``mcp-locks hooks install`` and the git guard);
* :mod:`~mcp_locks.hooks.nodes` maps files to node ids;
* :mod:`~mcp_locks.hooks.policy` asks the server (through :mod:`~mcp_locks.hooks.remote`), remembering the
  session's leases in :mod:`~mcp_locks.hooks.state`;
* :mod:`~mcp_locks.hooks.messages` words the verdict and :mod:`~mcp_locks.hooks.answer` says it in the host's
  format; :mod:`~mcp_locks.hooks.run` strings them together.

Nothing is imported here, so importing a submodule stays cheap.
"""
