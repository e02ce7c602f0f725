"""``mcp-locks hooks`` (install host hooks) and ``mcp-locks git-guard`` (a pre-commit check of the locks).

Both edit other programs' files: each refusal is a one-line message naming the file and what to do, and a
file that cannot be parsed is never written. See docs/hooks-install.md and docs/git-guard.md.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, TypeVar, cast

import click

from mcp_locks.core.errors import LockError
from mcp_locks.hooks.install_files import SetupError
from mcp_locks.hooks.install_hosts import HOSTS, SCOPES, Scope

if TYPE_CHECKING:  # the guard's modules (and subprocess) load only when a git-guard command runs
    from mcp_locks.hooks.gitguard import Mode

__all__ = ["git_guard", "hooks"]

T = TypeVar("T")

_host = click.argument("host", type=click.Choice(sorted(HOSTS)))
_scope = click.option(
    "--scope",
    type=click.Choice(SCOPES),
    default="project",
    show_default=True,
    help="project: this project's config (commit it to share; it runs mcp-locks from PATH, so every teammate "
    "needs it there: pipx install mcp-locks); user: your own config, for every project (by its absolute path).",
)
_mode = click.option(
    "--mode",
    type=click.Choice(["block", "warn"]),
    default="block",
    show_default=True,
    help="block: refuse such a commit; warn: say so and commit.",
)


def _done(action: Callable[[], T]) -> T:
    """Run ``action``; its refusal is the command's one-line error."""
    try:
        return action()
    except (SetupError, LockError) as e:
        raise click.ClickException(e.text() if isinstance(e, LockError) else str(e)) from None


def _program() -> tuple[str, ...]:
    from mcp_locks.cli.connect_hosts import launcher

    return launcher()


@click.group()
def hooks() -> None:
    """Check file locks before an AI host edits a file: install its hooks.

    Example: mcp-locks hooks install claude-code --policy lock
    """


@hooks.command()
@_host
@click.option(
    "--policy",
    type=click.Choice(["lock", "check", "warn"]),
    default=None,
    help="lock: take a lock per edited file; check: refuse files others hold; warn: only say so. "
    "Written to the project's .mcp-locks.toml (default there: lock).",
)
@_scope
def install(host: str, policy: str | None, scope: str) -> None:
    """Add `mcp-locks hook HOST` to HOST's hook config (running it again changes nothing).

    Example: mcp-locks hooks install cursor --scope user
    """
    from mcp_locks.hooks import install as setup

    done = _done(lambda: setup.install(HOSTS[host], cast(Scope, scope), Path.cwd(), _program(), policy))
    click.echo(f"{host}: {'installed in' if done.changed else 'already installed in'} {done.path}")
    for note in done.notes:
        click.echo(f"  {note}")


@hooks.command()
@_host
@_scope
def uninstall(host: str, scope: str) -> None:
    """Remove the entries `hooks install` added to HOST's config, and nothing else.

    Example: mcp-locks hooks uninstall codex
    """
    from mcp_locks.hooks import install as setup

    done = _done(lambda: setup.uninstall(HOSTS[host], cast(Scope, scope), Path.cwd()))
    click.echo(f"{host}: {'removed from' if done.changed else 'not installed in'} {done.path}")


@hooks.command()
def status() -> None:
    """Show the hooks installed for each host and scope, the project's settings, and whether the server answers.

    Example: mcp-locks hooks status
    """
    from mcp_locks.hooks.install_status import status_lines

    for line in _done(lambda: status_lines(Path.cwd())):
        click.echo(line)


@click.group(name="git-guard")
def git_guard() -> None:
    """Refuse commits of files another agent has write-locked: a git pre-commit hook.

    Example: mcp-locks git-guard install --mode block
    """


@git_guard.command(name="install")
@_mode
def guard_install(mode: str) -> None:
    """Add the guard to this repository's pre-commit hook (an existing hook is kept and runs first).

    Example: mcp-locks git-guard install --mode warn
    """
    from mcp_locks.hooks import gitguard

    done = _done(lambda: gitguard.install(Path.cwd(), _program(), cast("Mode", mode)))
    click.echo(f"git guard ({mode} mode) {'installed in' if done.changed else 'already in'} {done.hook}")
    if done.chained is not None:
        click.echo(f"  your previous pre-commit hook runs first, from {done.chained}")


@git_guard.command(name="uninstall")
def guard_uninstall() -> None:
    """Remove the guard and put back the pre-commit hook it chained, if any.

    Example: mcp-locks git-guard uninstall
    """
    from mcp_locks.hooks import gitguard

    done = _done(lambda: gitguard.uninstall(Path.cwd()))
    if not done.changed:
        click.echo(f"git guard: not installed ({done.hook})")
        return
    restored = f"; your previous hook is back in {done.chained}" if done.chained else ""
    click.echo(f"git guard removed from {done.hook}{restored}")


@git_guard.command()
@_mode
def check(mode: str) -> None:
    """Check the staged files against the locks (what the pre-commit hook runs); exit 1 to refuse.

    Example: mcp-locks git-guard check --mode warn
    """
    from mcp_locks.hooks.gitguard_check import check as check_staged

    outcome = check_staged(Path.cwd(), cast("Mode", mode))
    for line in outcome.lines:
        click.echo(line, err=True)
    if not outcome.allow:
        click.get_current_context().exit(1)
