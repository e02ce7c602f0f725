"""The faces: thin adapters that render the services for their surface (MCP tools and resources, REST, stdio).

Faces never touch a store and never decide a lock question; ``app`` assembles them into one ASGI app.
"""
