"""What `flaskserve serve` says as it starts: where to point a browser or a client, which models
it serves, and what is wrong with a repository that would serve none.

The server's own log says when each model is ready; this is the short greeting before it, for a
person who just ran `make serve` and wants the addresses.
"""

from __future__ import annotations

from pathlib import Path

from flaskserve.settings import Settings
from flaskserve.version import __version__

CONFIG_FILE = "model.toml"


def model_names(folder: Path) -> list[str]:
    """The model folders of a local repository (a folder holding `<model>/model.toml`)."""
    if not folder.is_dir():
        return []
    return sorted(
        child.name for child in folder.iterdir()
        if child.is_dir() and (child / CONFIG_FILE).is_file()
    )


def repository_problem(folder: Path) -> str | None:
    """Why `folder` serves no model, naming the fix, or None when it holds models."""
    if (folder / CONFIG_FILE).is_file():
        return (
            f"{folder} is one model's folder (it holds {CONFIG_FILE}), not a repository: pass the "
            f"folder that contains it, {folder.resolve().parent}"
        )
    if not model_names(folder):
        return (
            f"{folder} holds no model: a repository is a folder of model folders, each with a "
            f"{CONFIG_FILE} (flaskserve init DIR writes one)"
        )
    return None


def base_url(settings: Settings) -> str:
    if settings.public_url:
        return settings.public_url.rstrip("/")
    host = settings.host
    if ":" in host and not host.startswith("["):
        host = f"[{host}]"
    return f"http://{host}:{settings.port}"


def banner(settings: Settings, models: list[str] | None) -> str:
    """The lines printed before the workers start; `models` None when the app is the user's."""
    url = base_url(settings)
    served = "your app" if models is None else (", ".join(models) or "no models")
    lines = [
        f"flaskserve {__version__}: serving {served}",
        f"  playground   {url}/",
        f"  API docs     {url}/docs",
        f"  V2 root      {url}/v2",
    ]
    if settings.grpc_port:
        lines.append(f"  V2 gRPC      {settings.host}:{settings.grpc_port}")
    return "\n".join(lines)
