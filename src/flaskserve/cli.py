"""`flaskserve serve|models|init`, built with click as the `flask` command is."""

from __future__ import annotations

import atexit
import importlib
import importlib.util
import logging
import os
import shutil
import sys
import tempfile
from collections.abc import Callable, Mapping
from pathlib import Path

import click
from flask import Flask

from flaskserve.app import create_app, open_repository
from flaskserve.core.model import TensorSpec
from flaskserve.core.repository import ModelRepository
from flaskserve.deploy.command import deploy
from flaskserve.gate import browser
from flaskserve.gate.commands import check_service, keys, usage
from flaskserve.observability.metrics import shared_memory_dir
from flaskserve.ports import PortInUse, check_port_free
from flaskserve.settings import Settings
from flaskserve.startup import banner, model_names, repository_problem
from flaskserve.storage import StorageError, is_remote, open_mirror

log = logging.getLogger("flaskserve")

SAGEMAKER_PORT = 8080
SAGEMAKER_MODEL_DIR = "/opt/ml/model"


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="flaskserve")
def main() -> None:
    """Serve trained models over HTTP: Open Inference Protocol V2, KServe V1 and SageMaker."""


@main.command()
@click.argument("repository", required=False)
@click.option("--host", "-H", default=None, help="Interface to listen on [127.0.0.1].")
@click.option("--port", "-p", type=int, default=None, help="Port to listen on [5000].")
@click.option("--grpc-port", type=int, default=None, help="Port for V2 gRPC, e.g. 8001 [off].")
@click.option("--workers", "-w", type=int, default=None, help="Worker processes [one per core].")
@click.option(
    "--threads", type=int, default=None, help="Inference requests a worker runs at once [16]."
)
@click.option("--debug", is_flag=True, default=None, help="Flask's dev server with the reloader.")
@click.option(
    "--app", "app_ref", default=None, help="Serve module:attr (a ModelServer or Flask app)."
)
@click.option("--max-request-bytes", type=int, default=None, help="Largest body accepted.")
@click.option("--log-level", default=None, help="debug, info, warning or error [info].")
@click.option(
    "--log-format",
    type=click.Choice(["text", "json"]),
    default=None,
    help="Access and server log lines as text or as one JSON object per line [text].",
)
@click.option("--auth", default=None, help="API keys file (flaskserve keys add) [no keys].")
@click.option("--usage-db", default=None, help="Usage database [usage.sqlite3 beside --auth].")
@click.option("--max-batch-rows", type=int, default=None, help="Rows per request, 0: none [4096].")
@click.option(
    "--request-timeout-ms", type=int, default=None, help="Wait budget, 504 after [none]."
)
@click.option(
    "--max-queue-ms", type=int, default=None, help="Wait for a --threads slot before 503 [2000]."
)
@click.option(
    "--header-timeout-ms",
    type=int,
    default=None,
    help="Time a client has to send a request's headers before it is disconnected [5000].",
)
@click.option(
    "--graceful-timeout", type=int, default=None, help="Seconds to drain on SIGTERM [30]."
)
@click.option(
    "--model-control",
    is_flag=True,
    default=None,
    help="Allow loading and unloading models over HTTP [off; admin keys with --auth].",
)
@click.option(
    "--cors-origins", default=None, help="Comma-separated origins allowed to call the API [none]."
)
@click.option(
    "--allowed-hosts",
    default=None,
    help="Comma-separated Host names answered besides loopback ones [none].",
)
@click.option("--public-url", default=None, help="URL clients use, shown in snippets [relative].")
@click.option(
    "--body-timeout-ms",
    type=click.IntRange(min=1),
    default=None,
    help="Time a client has to send a request's body before 408 and a disconnect [10000].",
)
@click.option(
    "--max-stream-bytes",
    type=click.IntRange(min=0),
    default=None,
    help="Most bytes one streamed response sends, 0: no limit [8388608].",
)
@click.option(
    "--max-stream-seconds",
    type=click.IntRange(min=0),
    default=None,
    help="Longest one stream (HTTP or gRPC) runs, 0: no limit [600].",
)
def serve(
    repository: str | None,
    host: str | None,
    port: int | None,
    grpc_port: int | None,
    workers: int | None,
    threads: int | None,
    debug: bool | None,
    app_ref: str | None,
    max_request_bytes: int | None,
    log_level: str | None,
    log_format: str | None,
    auth: str | None,
    usage_db: str | None,
    max_batch_rows: int | None,
    request_timeout_ms: int | None,
    max_queue_ms: int | None,
    header_timeout_ms: int | None,
    graceful_timeout: int | None,
    model_control: bool | None,
    cors_origins: str | None,
    allowed_hosts: str | None,
    public_url: str | None,
    body_timeout_ms: int | None,
    max_stream_bytes: int | None,
    max_stream_seconds: int | None,
) -> None:
    """Serve REPOSITORY (a folder of models), or the embedded default models when omitted."""
    settings = Settings.from_env(
        repository=repository,
        host=host,
        port=port,
        grpc_port=grpc_port,
        workers=workers,
        threads=threads,
        debug=debug,
        max_request_bytes=max_request_bytes,
        log_level=log_level,
        log_format=log_format,
        auth=auth,
        usage_db=usage_db,
        max_batch_rows=max_batch_rows,
        request_timeout_ms=request_timeout_ms,
        max_queue_ms=max_queue_ms,
        header_timeout_ms=header_timeout_ms,
        graceful_timeout=graceful_timeout,
        model_control=model_control,
        cors_origins=cors_origins,
        allowed_hosts=allowed_hosts,
        public_url=public_url,
        body_timeout_ms=body_timeout_ms,
        max_stream_bytes=max_stream_bytes,
        max_stream_seconds=max_stream_seconds,
    )
    settings = sagemaker_overrides(settings, os.environ, explicit_port=port is not None)
    _configure_logging(settings)
    warning = open_model_control_warning(settings)
    if warning is not None:
        log.warning("%s", warning)
    if not settings.debug:
        _check_port(settings)
    served = _check_repository(settings) if app_ref is None else None
    if served is not None and (problem := repository_problem(served)):
        log.warning("%s", problem)
    check_service(settings)
    if not settings.debug and settings.state_dir is None:
        settings = settings.with_overrides(state_dir=_shared_state_dir())
    factory = _app_factory(settings, app_ref)
    greeting = banner(settings, None if app_ref else model_names(served) if served else [])
    if settings.log_format == "json":
        log.info("%s", greeting)  # every line of the output stays one JSON object
    else:
        click.echo(greeting)
    if settings.debug:
        from flaskserve.serving import serve_debug

        serve_debug(factory(), settings)
    else:
        from flaskserve.serving import serve_granian

        serve_granian(factory, settings)


def open_model_control_warning(settings: Settings) -> str | None:
    """The warning to log when anyone who reaches the server may load and unload its models:
    model control on, no keys, and an address other hosts can connect to."""
    if not settings.model_control or settings.auth or is_loopback(settings.host):
        return None
    return (
        f"MODEL CONTROL IS OPEN TO THE NETWORK: anyone who can reach {settings.host}:"
        f"{settings.port} may load and unload models (POST /v2/repository/models/<m>/load|unload)"
        " without a key, and an unloaded model leaves /v2/health/* answering 200. Serve with "
        "--auth KEYS so only admin keys may, or bind --host 127.0.0.1."
    )


def is_loopback(host: str) -> bool:
    """Whether `host` (a bind address, IPv6 possibly in brackets) accepts connections from this
    machine only."""
    return browser.is_loopback(host.strip("[]"))


def sagemaker_overrides(
    settings: Settings,
    environ: Mapping[str, str],
    explicit_port: bool,
    model_dir: str = SAGEMAKER_MODEL_DIR,
) -> Settings:
    """In a SageMaker container: listen where SageMaker sends traffic, serve /opt/ml/model."""
    bind_port = environ.get("SAGEMAKER_BIND_TO_PORT")
    in_sagemaker = bind_port is not None or Path(model_dir).is_dir()
    if not in_sagemaker or explicit_port:
        return settings
    port = int(bind_port) if bind_port else SAGEMAKER_PORT
    repository = settings.repository
    if repository is None and Path(model_dir).is_dir() and any(Path(model_dir).iterdir()):
        repository = model_dir
    return settings.with_overrides(host="0.0.0.0", port=port, repository=repository)


def _shared_state_dir() -> str:
    """A folder the workers share, removed when the master (not a worker) exits."""
    path = tempfile.mkdtemp(prefix="flaskserve-", dir=shared_memory_dir())
    master = os.getpid()

    def remove() -> None:
        if os.getpid() == master:
            shutil.rmtree(path, ignore_errors=True)

    atexit.register(remove)
    return path


def _configure_logging(settings: Settings) -> None:
    if settings.log_format == "json":
        from flaskserve.observability.logs import JsonFormatter

        handler = logging.StreamHandler()
        handler.setFormatter(JsonFormatter())
        logging.basicConfig(level=settings.log_level.upper(), handlers=[handler])
        return
    if settings.log_format != "text":
        raise click.BadParameter(
            f"{settings.log_format!r} is not a log format; use text or json",
            param_hint="--log-format / FLASKSERVE_LOG_FORMAT",
        )
    from flaskserve.observability.logs import TextFormatter

    handler = logging.StreamHandler()
    handler.setFormatter(
        TextFormatter("[%(asctime)s] [%(process)d] [%(levelname)s] %(name)s: %(message)s")
    )
    logging.basicConfig(level=settings.log_level.upper(), handlers=[handler])


def _check_port(settings: Settings) -> None:
    """Fail at once on a busy port, before the default models are built."""
    try:
        check_port_free(settings.host, settings.port)
    except PortInUse as exc:
        raise click.ClickException(
            f"{exc.strerror}: stop the server listening there or choose another --port"
        ) from None
    if not settings.grpc_port:
        return
    if importlib.util.find_spec("grpc") is None:
        raise click.ClickException(
            "--grpc-port needs gRPC support: pip install 'flaskserve[grpc]'"
        )
    if settings.grpc_port == settings.port:
        raise click.BadParameter(
            f"{settings.grpc_port} is also the HTTP port; choose another",
            param_hint="--grpc-port",
        )
    try:
        check_port_free(settings.host, settings.grpc_port)
    except PortInUse as exc:
        raise click.ClickException(
            f"{exc.strerror}: stop the server listening there or choose another --grpc-port"
        ) from None


def _check_repository(settings: Settings) -> Path | None:
    """Fail before forking workers when the folder is missing; build the defaults once.

    An `s3://` repository (or a folder whose models keep versions in S3) is synced here, once,
    so the workers read the local cache. Returns the local folder the models are read from
    (for S3, the mirror in the cache).
    """
    if settings.repository is None:
        from flaskserve.models.defaults import default_repository

        return default_repository(Path(settings.cache_dir))
    elif is_remote(settings.repository) or Path(settings.repository).is_dir():
        try:
            mirror = open_mirror(settings.repository, Path(settings.cache_dir))
            if mirror is not None:
                mirror.sync_all()
        except StorageError as exc:
            raise click.ClickException(str(exc)) from None
        if is_remote(settings.repository):
            root = getattr(mirror, "root", None)
            return root if isinstance(root, Path) else None
        return Path(settings.repository)
    else:
        raise click.BadParameter(f"{settings.repository} is not a folder", param_hint="REPOSITORY")


def _app_factory(settings: Settings, app_ref: str | None) -> Callable[[], Flask]:
    if app_ref is None:
        return lambda: create_app(settings)
    # A user's ModelServer reads Settings from the environment: hand it this command's settings.
    os.environ.update(settings.as_environ())

    def load_user_app() -> Flask:
        module_name, _, attr = app_ref.partition(":")
        sys.path.insert(0, os.getcwd())
        module = importlib.import_module(module_name)
        target = getattr(module, attr or "app")
        app = getattr(target, "app", target)
        if not isinstance(app, Flask):
            raise click.BadParameter(f"{app_ref} is neither a ModelServer nor a Flask app")
        return app

    return load_user_app


@main.command()
@click.argument("repository", required=False)
def models(repository: str | None) -> None:
    """Load REPOSITORY (default: the embedded models) and print each model's state and signature."""
    settings = Settings.from_env(repository=repository)
    logging.basicConfig(level=logging.CRITICAL)
    _check_repository(settings)
    click.echo(models_table(open_repository(settings)))


def models_table(repository: ModelRepository) -> str:
    rows = [("MODEL", "VERSION", "STATE", "PLATFORM", "INPUTS", "OUTPUTS")]
    notes = []
    for entry in repository.entries():
        statuses = entry.version_status()
        if not statuses:
            rows.append((entry.name, "-", entry.state, "-", "-", "-"))
            notes.append(f"{entry.name}: {entry.reason}")
        for status in statuses:
            model = status.model
            if model is None:
                rows.append((entry.name, status.version, status.state, "-", "-", "-"))
                notes.append(f"{entry.name} v{status.version}: {status.reason}")
                continue
            rows.append(
                (
                    entry.name,
                    status.version,
                    status.state,
                    model.platform,
                    _signature(model.inputs),
                    _signature(model.outputs),
                )
            )
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    lines = [
        "  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip()
        for row in rows
    ]
    if notes:
        lines += ["", "Unavailable:"] + [f"  {note}" for note in notes]
    return "\n".join(lines)


def _signature(specs: list[TensorSpec]) -> str:
    return ", ".join(
        f"{spec.name} {spec.datatype} [{', '.join(str(d) for d in spec.shape)}]" for spec in specs
    )


@main.command()
@click.argument("directory", type=click.Path(file_okay=False, path_type=Path))
def init(directory: Path) -> None:
    """Write an example model repository (the digits classifier) to DIRECTORY."""
    from flaskserve.models import digits

    target = directory / "digits"
    if target.exists():
        raise click.ClickException(f"{target} already exists; choose another folder")
    accuracy = digits.build(target)
    click.echo(f"wrote {target}/model.toml and {target}/1/model.skops (accuracy {accuracy:.3f})")
    click.echo(f"serve it with: flaskserve serve {directory}")


@main.group()
def convert() -> None:
    """Convert a model to another format, as a new version folder checked against the old one."""


@convert.command("sklearn-to-onnx")
@click.argument("model_dir", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option(
    "--sample",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    default=None,
    help="Rows (.npy or .csv) both versions must agree on [256 random rows].",
)
@click.option("--opset", type=int, default=None, help="ONNX opset [skl2onnx's newest].")
def convert_sklearn_to_onnx(model_dir: Path, sample: Path | None, opset: int | None) -> None:
    """Write MODEL_DIR's highest scikit-learn version as ONNX in a new version folder."""
    from flaskserve.convert import STEPS, ConversionError, sklearn_to_onnx
    from flaskserve.progress import Steps

    try:
        # Progress on stderr (a bar on a terminal, lines otherwise); the summary on stdout.
        with Steps(STEPS, "convert") as steps:
            conversion = sklearn_to_onnx(model_dir, sample=sample, opset=opset,
                                         progress=steps.step)
        click.echo(conversion.summary())
    except ConversionError as exc:
        raise click.ClickException(str(exc)) from None


main.add_command(keys)
main.add_command(deploy)
main.add_command(usage)
