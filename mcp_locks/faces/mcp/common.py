"""How the MCP tools are declared: shared argument types, annotations, the caller and the tool collector.

Each domain module (locks, observe, admin, files) registers its tools on a
:class:`ToolSet`; the server is built from the collected list (see ``tools.py``).
"""

# No "from __future__ import annotations": tool signatures use these Annotated types and the SDK evaluates them.

from collections.abc import Callable
from typing import Annotated, Any, Literal, TypeVar

from mcp.server.mcpserver.tools import Tool
from mcp_types import ToolAnnotations
from pydantic import Field

from mcp_locks.core.keys import LOCAL, Identity
from mcp_locks.faces.auth import current_caller
from mcp_locks.faces.mcp.sdk import strict_arguments

__all__ = [
    "CHANGES",
    "DESTRUCTIVE",
    "READONLY",
    "REMOVES",
    "SETS",
    "AgentArg",
    "CursorArg",
    "DepthArg",
    "LimitArg",
    "ModeArg",
    "NodeArg",
    "NoteArg",
    "RequestIdArg",
    "TokenArg",
    "ToolSet",
    "WorkspaceArg",
    "flat_schema",
]

_F = TypeVar("_F", bound=Callable[..., Any])

WorkspaceArg = Annotated[
    str | None,
    Field(description="Workspace id (1-63 of a-z 0-9 _ -). Omit for your key's only workspace, else 'default'."),
]
NodeArg = Annotated[
    str,
    Field(description="Workspace-relative path of the file or folder, e.g. 'reports/q3.md' (no leading '/', no '..')."),
]
ModeArg = Annotated[
    Literal["read", "write", "shared", "exclusive"],
    Field(description="'write' (exclusive: to change the file) or 'read' (shared: to read it consistently)."),
]
DepthArg = Annotated[
    Literal["node", "tree"],
    Field(description="'node' locks this path only; 'tree' locks it and everything below it (a whole folder)."),
]
NoteArg = Annotated[
    str | None, Field(description="Optional short note shown to others, e.g. what you are doing.", max_length=1024)
]
AgentArg = Annotated[
    str | None,
    Field(
        description="Your session's name below your key's agent (e.g. which subagent), the same on every call:"
        " the holder is agent/name, so two sessions of one key queue for each other instead of deadlocking.",
        max_length=64,
    ),
]
RequestIdArg = Annotated[
    str | None,
    Field(
        description="Optional id of this request (e.g. a UUID). Retrying with the same request_id returns the "
        "original result instead of taking a second lock.",
        max_length=128,
    ),
]
TokenArg = Annotated[str, Field(description="The secret token returned by lock_file / lock_files.")]
LimitArg = Annotated[int, Field(description="Page size, 1-1000.", ge=1, le=1000)]
CursorArg = Annotated[str | None, Field(description="next_cursor from the previous page.")]


def _hints(*, read_only: bool, destructive: bool, idempotent: bool) -> ToolAnnotations:
    """All four hints, spelt out: a host reads a missing one as its default (destructive, open world)."""
    # open_world_hint=False everywhere: every tool touches only this server's own locks and files.
    return ToolAnnotations(
        read_only_hint=read_only, destructive_hint=destructive, idempotent_hint=idempotent, open_world_hint=False
    )


#: Only reads: changes nothing, so repeating it is harmless.
READONLY = _hints(read_only=True, destructive=False, idempotent=True)
#: Adds something new (a lock) each time it succeeds: a retry without request_id takes a second one.
CHANGES = _hints(read_only=False, destructive=False, idempotent=False)
#: Changes state without destroying anyone's data, and a repeat has no further effect (renew, release, create).
SETS = _hints(read_only=False, destructive=False, idempotent=True)
#: Removes something others may rely on, and a repeat has no further effect (delete a file, break a lock).
REMOVES = _hints(read_only=False, destructive=True, idempotent=True)
#: Replaces content, and a repeat has a further effect (a new version): write_file.
DESTRUCTIVE = _hints(read_only=False, destructive=True, idempotent=False)


class ToolSet:
    """The tools being declared, in the order clients will list them, and who each call acts for.

    Each call acts for the key its HTTP request carried (the guard verified it),
    or for ``local`` on transports without HTTP (in-memory, stdio).
    """

    def __init__(self, local: Identity = LOCAL) -> None:
        self.local = local
        self.tools: list[Tool] = []

    def caller(self) -> Identity:
        """Who the current call speaks for."""
        return current_caller(self.local)

    def tool(
        self, description: str, annotations: ToolAnnotations, output_schema: dict[str, Any] | None = None
    ) -> Callable[[_F], _F]:
        """Decorator: declare ``fn`` as a tool (its name, signature and return type give the schemas).

        ``output_schema`` is for a tool that returns ready-made ``CallToolResult`` s (which have no
        schema of their own): it is published as given and the results are not checked against it.
        """

        def register(fn: _F) -> _F:
            t = Tool.from_function(fn, description=description, annotations=annotations)
            # Arguments are validated by the pydantic model, strictly as REST bodies are (a string or a bool
            # is never a number); the schema is what clients read and walk.
            strict_arguments(t)
            t.parameters = flat_schema(t.parameters)
            if output_schema is not None:
                t.fn_metadata.output_schema = output_schema
            if t.fn_metadata.output_schema is not None:
                t.fn_metadata.output_schema = flat_schema(t.fn_metadata.output_schema)
            self.tools.append(t)
            return fn

        return register


def flat_schema(schema: dict[str, Any]) -> dict[str, Any]:
    """The same JSON schema with ``$ref`` inlined, ``anyOf [X, null]`` as ``type: [X, null]`` and no titles.

    Clients validate every structured result against the output schema, and the
    modern HTTP transport walks the input schema on every call; this equivalent
    form is ~25-45% cheaper for both and reads more easily. Only simple
    nullables are rewritten; anything else is kept.
    """
    defs: dict[str, Any] = schema.get("$defs", {})

    def walk(node: Any) -> Any:
        if isinstance(node, list):
            return [walk(x) for x in node]
        if not isinstance(node, dict):
            return node
        if "$ref" in node and node["$ref"].startswith("#/$defs/"):
            target = defs[node["$ref"].removeprefix("#/$defs/")]
            return walk({**target, **{k: v for k, v in node.items() if k != "$ref"}})
        out = {k: walk(v) for k, v in node.items() if k not in ("$defs", "title")}
        return _nullable(out)

    result: dict[str, Any] = walk(schema)
    return result


def _nullable(node: dict[str, Any]) -> dict[str, Any]:
    """``{"anyOf": [X, {"type": "null"}]}`` (X with a single type) as X with ``type: [X's, "null"]``."""
    any_of = node.get("anyOf")
    if not (isinstance(any_of, list) and len(any_of) == 2 and {"type": "null"} in any_of):
        return node
    other = next(x for x in any_of if x != {"type": "null"})
    if not (isinstance(other, dict) and isinstance(other.get("type"), str)):
        return node
    merged = {**other, **{k: v for k, v in node.items() if k != "anyOf"}}
    merged["type"] = [other["type"], "null"]
    if "enum" in other:
        merged["enum"] = [*other["enum"], None]
    return merged
