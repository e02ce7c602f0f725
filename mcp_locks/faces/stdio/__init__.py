"""MCP over stdio, for hosts that can only launch a command (Claude Desktop-style configs).

Two ways:

* the bridge (``mcp-locks stdio --url URL --key KEY``): a stdio MCP server that
  forwards everything a host can ask to the running server over streamable HTTP,
  with the agent's key, so every agent on a machine shares one lock table: tools,
  resources and their subscriptions, prompts, logging, progress and cancellation
  (``bridge``). It outlives the server: while the server is away a call answers
  UNAVAILABLE at once, and the bridge reconnects by itself (``link``) and follows the
  host's subscriptions again (``relay``). A refused key ends it with one line
  (``launch``).
* embedded (``mcp-locks stdio --embedded --data-dir PATH``): the engine in this
  process, for a single client; the data dir is claimed like ``serve`` claims it.
"""

from __future__ import annotations

from mcp_locks.faces.stdio.launch import KeyRefused, NoServer, run_bridge, run_embedded

__all__ = ["KeyRefused", "NoServer", "run_bridge", "run_embedded"]
