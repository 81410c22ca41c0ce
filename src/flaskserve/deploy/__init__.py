"""`flaskserve deploy TARGET`: configuration for the engines that run and scale the server.

flaskserve does not invent a cluster. It writes the files those engines already read (a
Dockerfile, a CloudFormation stack, Kubernetes and KServe manifests) from templates shipped with
the package, so a user reads them, edits them and keeps them in version control. Each target is a
folder of templates under `templates/<target>/`, rendered with Jinja2 (already a Flask
dependency) from one `DeployOptions`.

Every target serves HTTP on 8080 and the V2 gRPC front door on 8001, Triton's usual pair, so
the package installed must carry the `grpc` extra.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from jinja2 import Environment, FileSystemLoader, StrictUndefined

from flaskserve.version import __version__

TEMPLATES = Path(__file__).parent / "templates"

#: target -> (template file, file written) pairs; dotfiles ship without their dot.
TARGETS: dict[str, tuple[tuple[str, str], ...]] = {
    "docker": (("Dockerfile", "Dockerfile"), ("dockerignore", ".dockerignore")),
    "aws": (("flaskserve.yaml", "flaskserve.yaml"),),
    "k8s": (
        ("namespace.yaml", "namespace.yaml"),
        ("deployment.yaml", "deployment.yaml"),
        ("service.yaml", "service.yaml"),
        ("hpa.yaml", "hpa.yaml"),
        ("pdb.yaml", "pdb.yaml"),
        ("networkpolicy.yaml", "networkpolicy.yaml"),
    ),
    "kserve": (
        ("servingruntime.yaml", "servingruntime.yaml"),
        ("serviceaccount.yaml", "serviceaccount.yaml"),
        ("inferenceservice.yaml", "inferenceservice.yaml"),
    ),
}

PORT = 8080
GRPC_PORT = 8001
#: A pip requirement naming flaskserve (not a path or URL); its extras in group 1.
_REQUIREMENT = re.compile(r"^\s*flaskserve\s*(?:\[([^\]]*)\])?\s*(?:[=<>!~;@]|$)", re.IGNORECASE)
_BUCKET = re.compile(r"^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$")
_K8S_NAME = re.compile(r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$")


class DeployError(ValueError):
    """An option that cannot make a working configuration; the message says which and why."""


@dataclass(frozen=True)
class DeployOptions:
    #: Name of the Kubernetes objects, the CloudFormation resources' tags, the image.
    name: str = "flaskserve"
    namespace: str = "flaskserve"
    image: str = f"flaskserve:{__version__}"
    #: pip requirement that installs the server (image build, EC2 user-data).
    package: str = f"flaskserve[s3,grpc]=={__version__}"
    #: File name of the flaskserve wheel written beside the files (`package.build_wheel`),
    #: which the instances install instead of `package`; empty: install `package`.
    wheel: str = ""
    #: Where the models live: `--bucket` and `--prefix` make `s3://bucket/prefix`.
    bucket: str | None = None
    prefix: str = "models/"
    min_replicas: int = 2
    max_replicas: int = 10
    instance_type: str = "t3.small"
    #: The namespace of the ingress controller, the only one the k8s NetworkPolicy admits.
    ingress_namespace: str = "ingress-nginx"

    def __post_init__(self) -> None:
        if self.bucket is not None and not _BUCKET.match(self.bucket):
            raise DeployError(
                f"--bucket {self.bucket!r} is not an S3 bucket name (3-63 lowercase letters, "
                "digits, dots and hyphens)"
            )
        if not all(
            _K8S_NAME.match(value) for value in (self.name, self.namespace, self.ingress_namespace)
        ):
            raise DeployError(
                "--name, --namespace and --ingress-namespace must be DNS labels such as "
                "'flaskserve'"
            )
        named = _REQUIREMENT.match(self.package)
        if named and "grpc" not in (e.strip() for e in (named.group(1) or "").split(",")):
            raise DeployError(
                f"--package {self.package!r} lacks the grpc extra, and the servers listen for "
                f"gRPC on {GRPC_PORT}: use e.g. 'flaskserve[s3,grpc]=={__version__}'"
            )
        if not 1 <= self.min_replicas <= self.max_replicas:
            raise DeployError(
                f"replicas must satisfy 1 <= min ({self.min_replicas}) <= max "
                f"({self.max_replicas})"
            )

    @property
    def model_prefix(self) -> str:
        """The key prefix as a folder: '' or ending in '/'."""
        prefix = self.prefix.strip("/")
        return f"{prefix}/" if prefix else ""

    @property
    def storage_uri(self) -> str | None:
        return f"s3://{self.bucket}/{self.model_prefix}" if self.bucket else None


def render(target: str, options: DeployOptions) -> dict[str, str]:
    """File name -> text of every file `target` needs."""
    if target not in TARGETS:
        raise DeployError(f"unknown target {target!r}; use one of {', '.join(TARGETS)}")
    if target == "kserve" and options.bucket is None:
        raise DeployError("deploy kserve needs --bucket: KServe pulls the models from storageUri")
    environment = Environment(
        loader=FileSystemLoader(TEMPLATES / target),
        undefined=StrictUndefined,
        keep_trailing_newline=True,
        trim_blocks=True,
        lstrip_blocks=True,
        autoescape=False,  # YAML and Dockerfiles, not HTML
    )
    values = {"o": options, "version": __version__, "port": PORT, "grpc_port": GRPC_PORT}
    return {
        written: environment.get_template(template).render(values)
        for template, written in TARGETS[target]
    }


def write(target: str, options: DeployOptions, out: Path, force: bool = False) -> list[Path]:
    """Render `target` into `out`; refuses to overwrite files unless `force`."""
    files = render(target, options)
    existing = [out / name for name in files if (out / name).exists()]
    if existing and not force:
        names = ", ".join(str(p) for p in existing)
        raise DeployError(f"{names} already exist(s); edit them, or pass --force to overwrite")
    out.mkdir(parents=True, exist_ok=True)
    written = []
    for name, text in files.items():
        (out / name).write_text(text, encoding="utf-8")
        written.append(out / name)
    return written
