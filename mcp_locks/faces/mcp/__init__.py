"""The MCP face: tools (by domain) and the ``locks://`` resources."""
