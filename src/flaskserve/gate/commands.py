"""`flaskserve keys add|list|revoke` and `flaskserve usage`: the operator's side of the service."""

from __future__ import annotations

import os
import sqlite3
from pathlib import Path

import click

from flaskserve.gate import usage_report, usage_store
from flaskserve.gate.http_hooks import usage_db_path
from flaskserve.gate.keys import KeyFileError, KeyStore, add_key, revoke_key
from flaskserve.settings import ENV_PREFIX, Settings

DEFAULT_KEYS_FILE = "keys.toml"

_file_option = click.option(
    "--file",
    "-f",
    "path",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help=f"Keys file [${ENV_PREFIX}AUTH, else {DEFAULT_KEYS_FILE}].",
)


def check_service(settings: Settings) -> None:
    """Fail before the workers are forked when the keys file or the usage database is unusable."""
    _check_not_empty(settings, click.BadParameter)
    if settings.auth:
        try:
            KeyStore(Path(settings.auth))
        except KeyFileError as exc:
            raise click.BadParameter(str(exc), param_hint="--auth / FLASKSERVE_AUTH") from None
    db = usage_db_path(settings)
    if db is not None:
        try:
            usage_store.connect(db).close()
        except (OSError, sqlite3.Error) as exc:
            raise click.BadParameter(
                f"cannot open the usage database {db}: {exc}",
                param_hint="--usage-db / FLASKSERVE_USAGE_DB",
            ) from None


def _check_not_empty(settings: Settings, error: type[click.ClickException]) -> None:
    """`FLASKSERVE_AUTH=` (say, a variable a deploy template left unfilled) must not quietly
    mean "no keys": an empty path is an error, as is an empty usage database path."""
    for name, value in (("auth", settings.auth), ("usage_db", settings.usage_db)):
        if value is not None and not value.strip():
            flag, variable = "--" + name.replace("_", "-"), ENV_PREFIX + name.upper()
            raise error(
                f"{flag} / {variable} is set but empty; give a path, or unset {variable} "
                + ("to serve without API keys" if name == "auth" else "for the default")
            )


def _keys_file(path: Path | None) -> Path:
    if path is not None:
        return path
    return Path(os.environ.get(ENV_PREFIX + "AUTH") or DEFAULT_KEYS_FILE)


@click.group()
def keys() -> None:
    """Manage API keys (serve with `flaskserve serve --auth keys.toml`)."""


@keys.command("add")
@click.argument("name")
@_file_option
@click.option("--models", default="", help="Comma-separated models the key may use [all].")
@click.option("--admin", is_flag=True, help="May load/unload models and read usage and metrics.")
@click.option("--rate", type=float, default=0.0, help="Requests per second [unlimited].")
@click.option("--burst", type=float, default=0.0, help="Requests at once [max(1, rate)].")
@click.option(
    "--tokens",
    type=click.IntRange(min=0),
    default=0,
    help="Token quota on generative models, prompt + completion [none].",
)
def add(
    name: str,
    path: Path | None,
    models: str,
    admin: bool,
    rate: float,
    burst: float,
    tokens: int,
) -> None:
    """Create a key called NAME; the key is printed once and only its hash is stored."""
    if rate < 0 or burst < 0:
        raise click.BadParameter("must be >= 0", param_hint="--rate / --burst")
    target = _keys_file(path)
    allowed = tuple(m.strip() for m in models.split(",") if m.strip())
    try:
        key = add_key(target, name, allowed, admin, rate, burst, tokens)
    except KeyFileError as exc:
        raise click.ClickException(str(exc)) from None
    click.echo(key)
    click.echo(
        f"key {name!r} added to {target}; copy the key above now, it is not stored anywhere",
        err=True,
    )


@keys.command("list")
@_file_option
def list_keys(path: Path | None) -> None:
    """List key ids and what each may do (never the keys)."""
    try:
        entries = KeyStore(_keys_file(path)).keys()
    except KeyFileError as exc:
        raise click.ClickException(str(exc)) from None
    rows = [("KEY", "ROLE", "MODELS", "RATE/S", "BURST")]
    for key in entries.values():
        rows.append(
            (
                key.id,
                "admin" if key.admin else "user",
                ",".join(key.models) or "*",
                f"{key.rate:g}" if key.rate else "-",
                f"{key.bucket_size:g}" if key.rate else "-",
            )
        )
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    for row in rows:
        click.echo("  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip())


@keys.command("revoke")
@click.argument("name")
@_file_option
def revoke(name: str, path: Path | None) -> None:
    """Remove key NAME; running servers refuse it within a second."""
    target = _keys_file(path)
    try:
        revoke_key(target, name)
    except KeyFileError as exc:
        raise click.ClickException(str(exc)) from None
    click.echo(f"key {name!r} revoked in {target}")


@click.command()
@click.option("--since", default=None, help="30m, 24h, 7d, or an ISO date/time (UTC) [all].")
@click.option("--csv", "as_csv", is_flag=True, help="CSV instead of a table.")
@click.option(
    "--db",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help=f"Usage database [${ENV_PREFIX}USAGE_DB, else usage.sqlite3 beside the keys file].",
)
def usage(since: str | None, as_csv: bool, db: Path | None) -> None:
    """Print usage per API key and model: the table a bill is made from."""
    if db is None:
        settings = Settings.from_env()
        _check_not_empty(settings, click.ClickException)
        if settings.auth is None and settings.usage_db is None:
            settings = settings.with_overrides(auth=DEFAULT_KEYS_FILE)
        db = usage_db_path(settings)
    assert db is not None
    try:
        start = usage_report.parse_since(since) if since else None
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="--since") from None
    try:
        rows = usage_store.read_usage(db, start)
    except FileNotFoundError as exc:
        raise click.ClickException(str(exc)) from None
    if as_csv:
        click.echo(usage_report.format_csv(rows), nl=False)
        return
    click.echo(f"usage since {usage_report.since_label(start)} ({db})")
    click.echo(usage_report.format_table(rows))
