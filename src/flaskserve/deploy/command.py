"""`flaskserve deploy TARGET`: the click command; the generators live in `flaskserve.deploy`."""

from __future__ import annotations

from pathlib import Path

import click

from flaskserve.deploy import TARGETS, DeployError, DeployOptions, write

_DEFAULTS = DeployOptions()

_NEXT_STEPS = {
    "docker": "build it: docker build -t {image} {out}",
    "aws": (
        "put a keys file in Secrets Manager (flaskserve keys add ops --admin --file keys.toml; "
        "aws secretsmanager create-secret --name {name}/api-keys --secret-string "
        "file://keys.toml), then create the stack: aws cloudformation deploy --stack-name {name} "
        "--template-file {out}/flaskserve.yaml --capabilities CAPABILITY_IAM "
        "--parameter-overrides VpcId=... LoadBalancerSubnets=... InstanceSubnets=... "
        "ApiKeysSecretArn=..."
    ),
    "k8s": (
        "create the keys Secret (flaskserve keys add ops --admin --file keys.toml; kubectl -n "
        "{namespace} create secret generic {name}-keys --from-file=keys.toml), then apply it: "
        "kubectl apply -f {out}"
    ),
    "kserve": (
        "create the keys Secret (flaskserve keys add ops --admin --file keys.toml; kubectl -n "
        "{namespace} create secret generic {name}-keys --from-file=keys.toml), then apply it: "
        "kubectl apply -f {out}"
    ),
}


@click.command()
@click.argument("target", type=click.Choice(list(TARGETS)))
@click.option("--out", "-o", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Folder to write the files to [deploy/TARGET].")
@click.option("--bucket", default=None, help="S3 bucket holding the model repository.")
@click.option("--prefix", default=_DEFAULTS.prefix, show_default=True,
              help="Key prefix of the model repository in the bucket.")
@click.option("--image", default=_DEFAULTS.image, show_default=True,
              help="Container image to build (docker) or run (k8s, kserve).")
@click.option("--package", default=_DEFAULTS.package, show_default=True,
              help="pip requirement that installs flaskserve with its grpc extra (docker, aws).")
@click.option("--name", default=_DEFAULTS.name, show_default=True,
              help="Name of the created resources.")
@click.option("--namespace", default=_DEFAULTS.namespace, show_default=True,
              help="Kubernetes namespace (k8s, kserve).")
@click.option("--min-replicas", type=int, default=_DEFAULTS.min_replicas, show_default=True,
              help="Fewest instances or pods, kept when idle.")
@click.option("--max-replicas", type=int, default=_DEFAULTS.max_replicas, show_default=True,
              help="Most instances or pods under load.")
@click.option("--instance-type", default=_DEFAULTS.instance_type, show_default=True,
              help="EC2 instance type (aws).")
@click.option("--ingress-namespace", default=_DEFAULTS.ingress_namespace, show_default=True,
              help="Namespace of the ingress controller, the only one admitted (k8s).")
@click.option("--force", is_flag=True, help="Overwrite files that already exist.")
def deploy(target: str, out: Path | None, force: bool, **values: object) -> None:
    """Write the files that run flaskserve on TARGET, ready to read, edit and apply.

    \b
    docker  Dockerfile (also a SageMaker container) and .dockerignore
    aws     CloudFormation: EC2 Auto Scaling group behind a load balancer, models from S3
    k8s     Deployment, Service, HorizontalPodAutoscaler, PodDisruptionBudget, NetworkPolicy
    kserve  ServingRuntime and InferenceService reading the models from S3
    """
    out = out or Path("deploy") / target
    try:
        options = DeployOptions(**values)  # type: ignore[arg-type]
        written = write(target, options, out, force=force)
    except DeployError as exc:
        raise click.ClickException(str(exc)) from None
    for path in written:
        click.echo(f"wrote {path}")
    click.echo("next, " + _NEXT_STEPS[target].format(out=out, image=options.image,
                                                    name=options.name,
                                                    namespace=options.namespace))
