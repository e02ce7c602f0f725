"""The engine: the workspace registry, one actor per workspace (its only writer), the lock and file services."""
