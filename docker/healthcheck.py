"""The image's HEALTHCHECK: GET /healthz where the server really listens; exit status 0 if it answers 200.

The server takes its host and port from its flags, then MCP_LOCKS_* (and ``$MCP_LOCKS_CONFIG``), then
the defaults. This check reads the same flags from the server's own command line
(``/proc/<pid>/cmdline``: the container's first process, or the pid given as the one argument) and
resolves the rest with the server's own settings model, so ``docker run IMAGE --port 9000`` and
``docker run -e MCP_LOCKS_PORT=9000 IMAGE`` both pass it. (``--port 0``, any free port, cannot be checked.)
"""

from __future__ import annotations

import sys
import urllib.request
from pathlib import Path

from mcp_locks.settings import load_settings

#: Seconds to wait for the answer (the HEALTHCHECK's own --timeout is 5 s).
TIMEOUT = 4.0
#: The flags of ``mcp-locks [--config FILE] serve [...]`` that decide where it listens.
ROOT_FLAGS = ("--config",)
SERVE_FLAGS = ("--host", "--port")


def command_line(pid: str) -> list[str]:
    """The argv of process ``pid`` (empty if it cannot be read)."""
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return []
    return raw.decode(errors="replace").split("\0")


def flags_of(argv: list[str]) -> dict[str, str]:
    """``--config``, ``--host`` and ``--port`` given to ``mcp-locks ... serve`` in ``argv`` (docker-init's too)."""
    program = next((i for i, a in enumerate(argv) if Path(a).name == "mcp-locks"), None)
    if program is None or "serve" not in argv[program + 1 :]:
        return {}
    serve = argv.index("serve", program + 1)
    found = _options(argv[program + 1 : serve], ROOT_FLAGS)
    return found | _options(argv[serve + 1 :], SERVE_FLAGS)


def _options(args: list[str], names: tuple[str, ...]) -> dict[str, str]:
    """The last value of each of ``names`` in ``args`` (``--name value`` or ``--name=value``), by bare name."""
    out: dict[str, str] = {}
    for i, arg in enumerate(args):
        name, eq, value = arg.partition("=")
        if name in names:
            if not eq:
                if i + 1 >= len(args):
                    continue
                value = args[i + 1]
            out[name.removeprefix("--")] = value
    return out


def health_url(pid: str) -> str:
    """The server's /healthz URL: its flags, then the environment and config file, as the server resolves them."""
    given = flags_of(command_line(pid))
    config = given.pop("config", None)
    settings = load_settings(config, **given)
    host = settings.host
    if host in ("0.0.0.0", ""):
        host = "127.0.0.1"
    elif host == "::":
        host = "::1"
    shown = f"[{host}]" if ":" in host else host
    return f"http://{shown}:{settings.port}/healthz"


def main() -> int:
    """0 if the server answers /healthz with 200, else 1 (what Docker takes as unhealthy)."""
    try:
        url = health_url(sys.argv[1] if len(sys.argv) > 1 else "1")
        with urllib.request.urlopen(url, timeout=TIMEOUT) as answer:  # our own URL: http only
            return 0 if answer.status == 200 else 1
    except Exception as e:  # refused, timed out, bad settings: unhealthy, said in one line (docker inspect shows it)
        print(f"unhealthy: {e}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
