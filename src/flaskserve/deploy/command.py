"""`flaskserve deploy TARGET`: one click command per target, each listing only its own flags;
the generators live in `flaskserve.deploy`, the wheel and the upload in `deploy.package`."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import click

from flaskserve.deploy import DeployError, DeployOptions, write
from flaskserve.deploy.package import (
    WHEEL_FOLDER,
    PackageError,
    build_wheel,
    repository_problem,
    upload,
    wheel_name,
)

_DEFAULTS = DeployOptions()

_KEYS = "flaskserve keys add ops --admin --file keys.toml"
_NEXT_STEPS = {
    "docker": "build it: docker build -t {image} {out}",
    "aws": (
        "put a keys file in Secrets Manager ({keys}; aws secretsmanager create-secret --name "
        "{name}/api-keys --secret-string file://keys.toml), {uploaded}then create the stack: aws "
        "cloudformation deploy --stack-name {name} --template-file {out}/flaskserve.yaml "
        "--capabilities CAPABILITY_IAM --parameter-overrides VpcId=... LoadBalancerSubnets=... "
        "InstanceSubnets=... ApiKeysSecretArn=... (docs/deploy.md, section 3)"
    ),
    "k8s": (
        "create the keys Secret ({keys}; kubectl -n {namespace} create secret generic "
        "{name}-keys --from-file=keys.toml), then apply it: kubectl apply -f {out}"
    ),
    "kserve": (
        "create the keys Secret ({keys}; kubectl -n {namespace} create secret generic "
        "{name}-keys --from-file=keys.toml), then apply it: kubectl apply -f {out}"
    ),
}

Decorator = Callable[[Callable[..., Any]], Callable[..., Any]]


def _options(*decorators: Decorator) -> Decorator:
    def apply(function: Callable[..., Any]) -> Callable[..., Any]:
        for decorator in reversed(decorators):
            function = decorator(function)
        return function

    return apply


_out = click.option("--out", "-o", type=click.Path(file_okay=False, path_type=Path),
                    default=None, help="Folder to write the files to [deploy/TARGET].")
_force = click.option("--force", is_flag=True, help="Overwrite files that already exist.")
_name = click.option("--name", default=_DEFAULTS.name, show_default=True,
                     help="Name of the created resources.")
_bucket = click.option("--bucket", default=None, help="S3 bucket holding the model repository.")
_prefix = click.option("--prefix", default=_DEFAULTS.prefix, show_default=True,
                       help="Key prefix of the model repository in the bucket.")
_image = click.option("--image", default=_DEFAULTS.image, show_default=True,
                      help="Container image to build (docker) or run (k8s, kserve).")
_package = click.option(
    "--package", default=None,
    help="pip requirement your instances can install from your index, with the grpc extra, "
    f"e.g. 'flaskserve[s3,grpc]=={_DEFAULTS.package.rpartition('==')[2]}' [none: a wheel of "
    "this flaskserve is written beside the files and installed from it].",
)
_namespace = click.option("--namespace", default=_DEFAULTS.namespace, show_default=True,
                          help="Kubernetes namespace.")
_replicas = _options(
    click.option("--min-replicas", type=int, default=_DEFAULTS.min_replicas, show_default=True,
                 help="Fewest instances or pods, kept when idle."),
    click.option("--max-replicas", type=int, default=_DEFAULTS.max_replicas, show_default=True,
                 help="Most instances or pods under load."),
)


@click.group()
def deploy() -> None:
    """Write the files that run flaskserve on a target, ready to read, edit and apply.

    `flaskserve deploy TARGET --help` lists the flags each target takes.
    """


@deploy.command("docker")
@_options(_out, _force, _name, _bucket, _prefix, _image, _package)
def deploy_docker(**values: Any) -> None:
    """Dockerfile (also a SageMaker container), .dockerignore and a flaskserve wheel."""
    _generate("docker", values)


@deploy.command("aws")
@_options(_out, _force, _name, _bucket, _prefix, _package, _replicas)
@click.option("--instance-type", default=_DEFAULTS.instance_type, show_default=True,
              help="EC2 instance type.")
@click.option("--upload", is_flag=True,
              help=f"Put the wheel in s3://BUCKET/PREFIX{WHEEL_FOLDER} (needs --bucket; the AWS "
              "credential chain, AWS_ENDPOINT_URL honoured).")
@click.option("--models", type=click.Path(path_type=Path), default=None,
              help="With --upload: also upload this local model repository to s3://BUCKET/PREFIX.")
def deploy_aws(upload: bool, models: Path | None, **values: Any) -> None:
    """CloudFormation: EC2 Auto Scaling group behind a load balancer, models from S3.

    Writes deploy/aws/flaskserve.yaml and, unless --package names a requirement your instances
    can install, a wheel of this flaskserve that the instances install from the bucket.
    """
    if models is not None and not upload:
        raise click.UsageError("--models is uploaded by --upload: pass both")
    if upload and not values["bucket"]:
        raise click.UsageError("--upload needs --bucket")
    if models is not None and (problem := repository_problem(models)):
        raise click.BadParameter(problem, param_hint="--models")
    options, _, wheel = _generate("aws", values, uploading=upload)
    if not upload:
        if wheel is not None:
            click.echo(f"upload the wheel (or run again with --upload): aws s3 cp {wheel} "
                       f"s3://{options.bucket or 'BUCKET'}/{options.model_prefix}{WHEEL_FOLDER}")
        return
    try:
        _upload(options, wheel, models)
    except PackageError as exc:
        raise click.ClickException(str(exc)) from None


@deploy.command("k8s")
@_options(_out, _force, _name, _bucket, _prefix, _image, _namespace, _replicas)
@click.option("--ingress-namespace", default=_DEFAULTS.ingress_namespace, show_default=True,
              help="Namespace of the ingress controller, the only one admitted.")
def deploy_k8s(**values: Any) -> None:
    """Deployment, Service, HorizontalPodAutoscaler, PodDisruptionBudget, NetworkPolicy."""
    _generate("k8s", values)


@deploy.command("kserve")
@_options(_out, _force, _name, _bucket, _prefix, _image, _namespace)
def deploy_kserve(**values: Any) -> None:
    """ServingRuntime and InferenceService reading the models from S3 (needs --bucket)."""
    _generate("kserve", values)


def _generate(
    target: str, values: dict[str, Any], uploading: bool = False
) -> tuple[DeployOptions, Path, Path | None]:
    """Write `target`'s files (and the wheel, for docker and aws without --package)."""
    out: Path = values.pop("out") or Path("deploy") / target
    force: bool = values.pop("force")
    with_wheel = target in ("docker", "aws") and values.get("package") is None
    if values.get("package") is None:
        values.pop("package", None)
    wheel = None
    try:
        options = DeployOptions(**values, wheel=wheel_name() if with_wheel else "")
        written = write(target, options, out, force=force)
        if with_wheel:
            wheel = build_wheel(out)
    except (DeployError, PackageError) as exc:
        raise click.ClickException(str(exc)) from None
    for path in [*written, *([wheel] if wheel else [])]:
        click.echo(f"wrote {path}")
    click.echo("next, " + _NEXT_STEPS[target].format(
        out=out, image=options.image, name=options.name, namespace=options.namespace,
        keys=_KEYS, uploaded="" if wheel is None or uploading else "upload the wheel (below), ",
    ))
    return options, out, wheel


def _upload(options: DeployOptions, wheel: Path | None, models: Path | None) -> None:
    assert options.bucket is not None
    upload(options.bucket, options.model_prefix, wheel, models, click.echo)
