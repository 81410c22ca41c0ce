"""`flaskserve deploy`: every generated file passes the linter its engine's users trust.

Linters: hadolint (Dockerfile), cfn-lint (CloudFormation), kubernetes-validate --strict against
the schemas it ships (offline), and one checkov scan over everything (it is slow to start).
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from cfnlint.decode import decode_str
from click.testing import CliRunner

from flaskserve.cli import main, sagemaker_overrides
from flaskserve.settings import Settings

BUCKET = "acme-models"
PREFIX = "serving/prod/"
#: cfn-lint's exit code is a bitmask: 1 fatal, 2 error, 4 warning, 8 informational. Errors and
#: warnings fail; informational rules are opt-in (--include-checks I) and we do not opt in.
CFN_LINT_FAILURE_BITS = 1 | 2 | 4


def tool(name: str) -> str:
    beside = Path(sys.executable).parent / name
    found = str(beside) if beside.is_file() else shutil.which(name)
    if found is None:
        pytest.fail(f"{name} is not installed; install the dev extra (pip install -e '.[dev]')")
    return found


def run(*args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run(list(args), capture_output=True, text=True, timeout=timeout)


def generate(out: Path, target: str, *options: str) -> Path:
    result = CliRunner().invoke(main, ["deploy", target, "--out", str(out), *options])
    assert result.exit_code == 0, result.output
    return out


@pytest.fixture(scope="session")
def generated(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Every target, with and without a bucket where that differs, generated once."""
    root = tmp_path_factory.mktemp("deploy")
    s3 = ["--bucket", BUCKET, "--prefix", PREFIX]
    generate(root / "docker", "docker")
    generate(root / "docker-s3", "docker", *s3)
    generate(root / "aws", "aws", *s3, "--min-replicas", "3", "--max-replicas", "12")
    generate(root / "aws-no-bucket", "aws")
    generate(root / "k8s", "k8s", *s3, "--min-replicas", "3", "--max-replicas", "12")
    generate(root / "k8s-defaults", "k8s")
    generate(root / "kserve", "kserve", *s3)
    return root


def load_cfn(path: Path) -> dict:
    template, problems = decode_str(path.read_text(encoding="utf-8"))
    assert not problems
    return template


def load_yaml(path: Path) -> dict:
    return yaml.safe_load(path.read_text(encoding="utf-8"))


# -- docker ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("variant", ["docker", "docker-s3"])
def test_the_dockerfile_passes_hadolint(generated, variant):
    result = run(tool("hadolint"), str(generated / variant / "Dockerfile"))
    assert result.returncode == 0, result.stdout + result.stderr


def test_the_dockerfile_is_multi_stage_non_root_with_an_exec_entrypoint_and_healthcheck(generated):
    text = (generated / "docker-s3" / "Dockerfile").read_text()
    stages = re.findall(r"^FROM (\S+)", text, re.MULTILINE)
    assert len(stages) == 2 and all("-slim" in image for image in stages)
    assert re.search(r"^USER 10001:10001$", text, re.MULTILINE)
    assert '\nENTRYPOINT ["flaskserve"]\n' in text
    assert f'\nCMD ["serve", "s3://{BUCKET}/{PREFIX}"]\n' in text
    assert "/v2/health/ready" in re.search(r"HEALTHCHECK .*(?:\n .*)*", text).group(0)
    assert (generated / "docker" / ".dockerignore").read_text().splitlines()[-3:] == [
        "*", "!Dockerfile", "!*.whl"
    ]
    assert '\nCMD ["serve"]\n' in (generated / "docker" / "Dockerfile").read_text()


def test_the_images_environment_leaves_sagemaker_in_charge_of_the_port(generated):
    """SageMaker runs `IMAGE serve`: the image's FLASKSERVE_* defaults must not pin the port."""
    text = (generated / "docker" / "Dockerfile").read_text()
    env_block = re.search(r"^ENV PATH=.*?(?=^\S)", text, re.MULTILINE | re.DOTALL).group(0)
    image_env = dict(re.findall(r"(FLASKSERVE_\w+)=(\S+)", env_block))
    settings = Settings.from_env(image_env)
    assert (settings.host, settings.port) == ("0.0.0.0", 8080)
    inside = sagemaker_overrides(
        settings, {"SAGEMAKER_BIND_TO_PORT": "9090"}, explicit_port=False, model_dir="/nonexistent"
    )
    assert inside.port == 9090


# -- aws ------------------------------------------------------------------------------------------


@pytest.mark.slow  # cfn-lint loads every resource schema
def test_the_cloudformation_templates_pass_cfn_lint(generated):
    templates = [generated / d / "flaskserve.yaml" for d in ("aws", "aws-no-bucket")]
    result = run(tool("cfn-lint"), "--", *map(str, templates))
    assert result.returncode & CFN_LINT_FAILURE_BITS == 0, result.stdout + result.stderr


@pytest.mark.slow  # cfn-lint loads every resource schema
def test_cfn_lint_would_catch_a_broken_template(generated, tmp_path):
    broken = (generated / "aws" / "flaskserve.yaml").read_text().replace(
        "HealthCheckType: ELB", "HealthCheckType: LOADBALANCER"
    )
    (tmp_path / "broken.yaml").write_text(broken)
    result = run(tool("cfn-lint"), "--", str(tmp_path / "broken.yaml"))
    assert result.returncode & 2, result.stdout


def test_the_stack_scales_an_auto_scaling_group_behind_a_load_balancer(generated):
    template = load_cfn(generated / "aws" / "flaskserve.yaml")
    parameters, resources = template["Parameters"], template["Resources"]
    assert parameters["ModelBucket"]["Default"] == BUCKET
    assert parameters["ModelPrefix"]["Default"] == PREFIX
    assert (parameters["MinSize"]["Default"], parameters["MaxSize"]["Default"]) == (3, 12)
    group = resources["AutoScalingGroup"]["Properties"]
    assert group["MinSize"] == {"Ref": "MinSize"} and group["MaxSize"] == {"Ref": "MaxSize"}
    assert group["DesiredCapacity"] == {"Ref": "DesiredCapacity"}
    assert group["VPCZoneIdentifier"] == {"Ref": "InstanceSubnets"}
    assert group["HealthCheckType"] == "ELB"
    target_group = resources["TargetGroup"]["Properties"]
    assert (target_group["Port"], target_group["HealthCheckPath"]) == (8080, "/v2/health/ready")
    assert resources["LoadBalancer"]["Properties"]["Subnets"] == {"Ref": "LoadBalancerSubnets"}
    by_requests = resources["RequestScalingPolicy"]
    by_cpu = resources["CpuScalingPolicy"]
    assert (by_requests["Condition"], by_cpu["Condition"]) == ("ScaleOnRequests", "ScaleOnCpu")
    assert by_requests["Properties"]["PolicyType"] == "TargetTrackingScaling"
    metric = by_requests["Properties"]["TargetTrackingConfiguration"]
    assert metric["PredefinedMetricSpecification"]["PredefinedMetricType"] == (
        "ALBRequestCountPerTarget"
    )
    assert parameters["ScalingMetric"]["AllowedValues"] == [
        "RequestCountPerTarget", "CPUUtilization"
    ]


def test_the_instances_may_only_read_the_model_prefix_and_only_the_balancer_reaches_them(
    generated,
):
    resources = load_cfn(generated / "aws" / "flaskserve.yaml")["Resources"]
    (policy,) = resources["InstanceRole"]["Properties"]["Policies"]
    statements = policy["PolicyDocument"]["Statement"]
    assert sorted(s["Action"] for s in statements) == ["s3:GetObject", "s3:ListBucket"]
    resources_of = {s["Action"]: s["Resource"]["Fn::Sub"] for s in statements}
    assert resources_of == {
        "s3:ListBucket": "arn:${AWS::Partition}:s3:::${ModelBucket}",
        "s3:GetObject": "arn:${AWS::Partition}:s3:::${ModelBucket}/${ModelPrefix}*",
    }
    listing = next(s for s in statements if s["Action"] == "s3:ListBucket")
    assert listing["Condition"]["StringLike"]["s3:prefix"] == {"Fn::Sub": "${ModelPrefix}*"}
    instance_group = resources["InstanceSecurityGroup"]["Properties"]
    assert "SecurityGroupIngress" not in instance_group
    ingress = [r["Properties"] for r in resources.values()
               if r["Type"] == "AWS::EC2::SecurityGroupIngress"]
    assert ingress == [{
        "GroupId": {"Ref": "InstanceSecurityGroup"}, "IpProtocol": "tcp", "FromPort": 8080,
        "ToPort": 8080, "SourceSecurityGroupId": {"Ref": "LoadBalancerSecurityGroup"},
        "Description": "flaskserve, from the load balancer only",
    }]


def test_the_user_data_installs_flaskserve_and_runs_it_under_systemd_from_s3(generated):
    resources = load_cfn(generated / "aws" / "flaskserve.yaml")["Resources"]
    data = resources["LaunchTemplate"]["Properties"]["LaunchTemplateData"]
    assert data["MetadataOptions"]["HttpTokens"] == "required"
    script = data["UserData"]["Fn::Base64"]["Fn::Sub"]
    values = {"AWS::Region": "eu-west-1", "ModelBucket": BUCKET, "ModelPrefix": PREFIX,
              "FlaskServeSpec": "flaskserve[s3]==0.1.0"}
    rendered = re.sub(r"\$\{([^}]+)\}", lambda m: values[m.group(1)], script)
    assert rendered.startswith("#cloud-config\n")
    config = yaml.safe_load(rendered)
    (unit,) = [f for f in config["write_files"] if f["path"].endswith("flaskserve.service")]
    assert (
        f"ExecStart=/opt/flaskserve/bin/flaskserve serve s3://{BUCKET}/{PREFIX} "
        "--host 0.0.0.0 --port 8080"
    ) in unit["content"]
    assert "User=flaskserve" in unit["content"]
    assert ["systemctl", "enable", "--now", "flaskserve.service"] in config["runcmd"]
    assert ["/opt/flaskserve/bin/pip", "install", "--no-cache-dir", "flaskserve[s3]==0.1.0"] in (
        config["runcmd"]
    )


# -- k8s and kserve -------------------------------------------------------------------------------


def test_the_kubernetes_manifests_pass_strict_schema_validation(generated):
    files = sorted(str(p) for d in ("k8s", "k8s-defaults") for p in (generated / d).glob("*.yaml"))
    result = run(tool("kubernetes-validate"), "--strict", "--quiet", *files)
    assert result.returncode == 0, result.stdout + result.stderr


def test_strict_validation_rejects_a_misspelt_field(generated, tmp_path):
    text = (generated / "k8s" / "deployment.yaml").read_text()
    (tmp_path / "typo.yaml").write_text(text.replace("readinessProbe:", "readynessProbe:"))
    result = run(tool("kubernetes-validate"), "--strict", "--quiet", str(tmp_path / "typo.yaml"))
    assert result.returncode != 0


def test_the_deployment_drains_and_probes_and_the_autoscaler_bounds_it(generated):
    deployment = load_yaml(generated / "k8s" / "deployment.yaml")
    pod = deployment["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    assert container["readinessProbe"]["httpGet"]["path"] == "/v2/health/ready"
    assert container["livenessProbe"]["httpGet"]["path"] == "/v2/health/live"
    assert container["args"] == ["serve", f"s3://{BUCKET}/{PREFIX}"]
    assert set(container["resources"]) == {"requests", "limits"}
    pre_stop = int(container["lifecycle"]["preStop"]["exec"]["command"][1])
    assert pod["terminationGracePeriodSeconds"] > pre_stop + Settings().graceful_timeout
    assert pod["securityContext"]["runAsNonRoot"] is True
    hpa = load_yaml(generated / "k8s" / "hpa.yaml")
    assert hpa["apiVersion"] == "autoscaling/v2"
    assert (hpa["spec"]["minReplicas"], hpa["spec"]["maxReplicas"]) == (3, 12)
    assert hpa["spec"]["metrics"][0]["resource"]["name"] == "cpu"
    assert hpa["spec"]["scaleTargetRef"]["name"] == deployment["metadata"]["name"]
    pdb = load_yaml(generated / "k8s" / "pdb.yaml")
    labels = deployment["spec"]["template"]["metadata"]["labels"]
    assert pdb["spec"]["selector"]["matchLabels"].items() <= labels.items()
    service = load_yaml(generated / "k8s" / "service.yaml")
    assert service["spec"]["selector"].items() <= labels.items()


def test_the_inference_service_uses_the_flaskserve_runtime_over_protocol_v2(generated, tmp_path):
    runtime = load_yaml(generated / "kserve" / "servingruntime.yaml")
    service = load_yaml(generated / "kserve" / "inferenceservice.yaml")
    model = service["spec"]["predictor"]["model"]
    assert model["storageUri"] == f"s3://{BUCKET}/{PREFIX}"
    assert model["runtime"] == runtime["metadata"]["name"]
    formats = [f["name"] for f in runtime["spec"]["supportedModelFormats"]]
    assert model["modelFormat"]["name"] in formats
    assert model["protocolVersion"] == "v2" and "v2" in runtime["spec"]["protocolVersions"]
    (container,) = runtime["spec"]["containers"]
    assert container["args"][:2] == ["serve", "/mnt/models"]  # where KServe puts storageUri
    # KServe's CRDs are not shipped offline; validate the container part as a core Pod.
    pod = {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "runtime"},
           "spec": {"containers": runtime["spec"]["containers"]}}
    (tmp_path / "pod.yaml").write_text(yaml.safe_dump(pod))
    files = [str(tmp_path / "pod.yaml"), str(generated / "kserve" / "serviceaccount.yaml")]
    result = run(tool("kubernetes-validate"), "--strict", "--quiet", *files)
    assert result.returncode == 0, result.stdout + result.stderr


def test_kserve_needs_a_bucket(tmp_path):
    result = CliRunner().invoke(main, ["deploy", "kserve", "--out", str(tmp_path / "k")])
    assert result.exit_code == 1
    assert "deploy kserve needs --bucket" in result.output


# -- every file at once ---------------------------------------------------------------------------


@pytest.mark.slow  # checkov runs its whole policy set
def test_checkov_finds_nothing_that_is_not_justified_in_the_file(generated):
    result = run(
        tool("checkov"), "--skip-download", "--directory", str(generated), "--output", "json",
        "--framework", "cloudformation", "dockerfile", "kubernetes", timeout=300,
    )
    reports = json.loads(result.stdout)
    reports = reports if isinstance(reports, list) else [reports]
    assert {r["check_type"] for r in reports} == {"cloudformation", "dockerfile", "kubernetes"}
    for report in reports:
        failed = [(c["check_id"], c["file_path"]) for c in report["results"]["failed_checks"]]
        assert failed == [], report["check_type"]
        assert report["summary"]["parsing_errors"] == 0
        for skipped in report["results"]["skipped_checks"]:
            assert len(skipped["check_result"].get("suppress_comment", "")) > 30, skipped


# -- the command ----------------------------------------------------------------------------------


def test_deploy_writes_to_deploy_target_and_never_overwrites_without_force(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    runner = CliRunner()
    first = runner.invoke(main, ["deploy", "k8s"])
    assert first.exit_code == 0, first.output
    assert sorted(p.name for p in (tmp_path / "deploy" / "k8s").iterdir()) == [
        "deployment.yaml", "hpa.yaml", "namespace.yaml", "networkpolicy.yaml", "pdb.yaml",
        "service.yaml",
    ]
    (tmp_path / "deploy" / "k8s" / "hpa.yaml").write_text("# my edits\n")
    again = runner.invoke(main, ["deploy", "k8s"])
    assert again.exit_code == 1 and "--force" in again.output
    assert (tmp_path / "deploy" / "k8s" / "hpa.yaml").read_text() == "# my edits\n"
    forced = runner.invoke(main, ["deploy", "k8s", "--force"])
    assert forced.exit_code == 0
    assert "HorizontalPodAutoscaler" in (tmp_path / "deploy" / "k8s" / "hpa.yaml").read_text()


@pytest.mark.parametrize(
    ("options", "message"),
    [
        (["--bucket", "Not_A_Bucket"], "is not an S3 bucket name"),
        (["--min-replicas", "5", "--max-replicas", "2"], "1 <= min (5) <= max (2)"),
        (["--name", "Flask Serve"], "must be DNS labels"),
    ],
)
def test_deploy_rejects_options_that_cannot_work(tmp_path, options, message):
    result = CliRunner().invoke(main, ["deploy", "aws", "--out", str(tmp_path), *options])
    assert result.exit_code == 1
    assert message in result.output
    assert not list(tmp_path.iterdir())
