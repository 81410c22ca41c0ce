"""`flaskserve deploy`: every generated file passes the linter its engine's users trust.

Linters: hadolint (Dockerfile), cfn-lint (CloudFormation), kubernetes-validate --strict against
the schemas it ships (offline), and one checkov scan over everything (it is slow to start).
"""

from __future__ import annotations

import fnmatch
import json
import os
import re
import shutil
import stat
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from click.testing import CliRunner
from fake_secrets import FakeSecretsManager
from stack import boot_script, load_cfn, written_files

from flaskserve.cli import main, sagemaker_overrides
from flaskserve.gate.keys import KeyStore, add_key
from flaskserve.settings import Settings

BUCKET = "acme-models"
PREFIX = "serving/prod/"
SECRET_ARN = "arn:aws:secretsmanager:eu-west-1:123456789012:secret:flaskserve/api-keys-AbCdEf"
KEYS_FILE = "/var/lib/flaskserve/keys.toml"
OPERATOR_PATHS = (
    "/v2/repository/index", "/v2/repository/models/digits/load",
    "/v2/repository/models/digits/unload", "/v2/usage", "/metrics",
)
PUBLIC_PATHS = (
    "/v2/models/digits/infer", "/v2/models/digits/versions/1/infer", "/v2/health/ready", "/v2",
    "/v1/models/digits:predict", "/invocations", "/", "/docs",
)
#: The gRPC calls the public load balancer must refuse (operator calls) and pass.
OPERATOR_RPCS = tuple(
    f"/inference.GRPCInferenceService/{rpc}"
    for rpc in ("RepositoryIndex", "RepositoryModelLoad", "RepositoryModelUnload")
)
PUBLIC_RPCS = (
    *(f"/inference.GRPCInferenceService/{rpc}"
      for rpc in ("ModelInfer", "ModelMetadata", "ModelReady", "ServerReady", "ServerMetadata")),
    "/grpc.health.v1.Health/Check",
)
GRPC_PORT = 8001
#: A requirement for those who publish flaskserve to their own index (`--package`).
PUBLISHED = "flaskserve[s3,grpc]==0.1.0"
WHEEL = "flaskserve-0.1.0-py3-none-any.whl"
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
    published = ["--package", PUBLISHED]
    generate(root / "docker", "docker")
    generate(root / "docker-s3", "docker", *s3, *published)
    generate(root / "aws", "aws", *s3, "--min-replicas", "3", "--max-replicas", "12")
    generate(root / "aws-no-bucket", "aws", *published)
    generate(root / "k8s", "k8s", *s3, "--min-replicas", "3", "--max-replicas", "12")
    generate(root / "k8s-defaults", "k8s")
    generate(root / "kserve", "kserve", *s3)
    return root


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
    assert re.search(r"^EXPOSE 8080 8001$", text, re.MULTILINE)
    assert (generated / "docker" / ".dockerignore").read_text().splitlines()[-3:] == [
        "*", "!Dockerfile", "!*.whl"
    ]
    assert '\nCMD ["serve"]\n' in (generated / "docker" / "Dockerfile").read_text()


def test_the_image_and_the_instances_install_the_grpc_extra_they_serve_with(generated):
    text = (generated / "docker" / "Dockerfile").read_text()
    (spec,) = re.findall(r'^ARG FLASKSERVE_SPEC="([^"]+)"$', text, re.MULTILINE)
    assert re.fullmatch(r"flaskserve\[s3,grpc\]==\S+", spec)
    parameters = load_cfn(generated / "aws" / "flaskserve.yaml")["Parameters"]
    assert parameters["FlaskServeSpec"]["Default"] == spec


def test_the_images_environment_leaves_sagemaker_in_charge_of_the_port(generated):
    """SageMaker runs `IMAGE serve`: the image's FLASKSERVE_* defaults must not pin the port."""
    text = (generated / "docker" / "Dockerfile").read_text()
    env_block = re.search(r"^ENV PATH=.*?(?=^\S)", text, re.MULTILINE | re.DOTALL).group(0)
    image_env = dict(re.findall(r"(FLASKSERVE_\w+)=(\S+)", env_block))
    settings = Settings.from_env(image_env)
    assert (settings.host, settings.port, settings.grpc_port) == ("0.0.0.0", 8080, GRPC_PORT)
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
    (policy,) = [p for p in resources["InstanceRole"]["Properties"]["Policies"]
                 if p["PolicyName"] == "read-model-repository"]
    statements = policy["PolicyDocument"]["Statement"]
    assert sorted(s["Action"] for s in statements) == [
        "s3:GetObject", "s3:ListBucket", "secretsmanager:GetSecretValue"
    ]
    resources_of = {s["Action"]: s["Resource"]["Fn::Sub"] for s in statements
                    if s["Action"].startswith("s3:")}
    assert resources_of == {
        "s3:ListBucket": "arn:${AWS::Partition}:s3:::${ModelBucket}",
        "s3:GetObject": "arn:${AWS::Partition}:s3:::${ModelBucket}/${ModelPrefix}*",
    }
    listing = next(s for s in statements if s["Action"] == "s3:ListBucket")
    assert listing["Condition"]["StringLike"]["s3:prefix"] == {"Fn::Sub": "${ModelPrefix}*"}
    instance_group = resources["InstanceSecurityGroup"]["Properties"]
    assert "SecurityGroupIngress" not in instance_group
    to_instances = [r for r in resources.values() if r["Type"] == "AWS::EC2::SecurityGroupIngress"
                    and r["Properties"]["GroupId"] == {"Ref": "InstanceSecurityGroup"}]
    assert sorted((r["Properties"]["FromPort"], r["Properties"]["ToPort"], r.get("Condition", ""),
                   r["Properties"]["SourceSecurityGroupId"]["Ref"]) for r in to_instances) == [
        (GRPC_PORT, GRPC_PORT, "HasCertificate", "LoadBalancerSecurityGroup"),
        (8080, 8080, "", "LoadBalancerSecurityGroup"),
    ]
    assert all(set(r["Properties"]) == {"GroupId", "IpProtocol", "FromPort", "ToPort",
                                        "SourceSecurityGroupId", "Description"}
               for r in to_instances)


def instance_files(generated: Path, variant: str = "aws") -> tuple[str, dict[str, str]]:
    """The instances' boot script with the stack's parameters, and the files it writes."""
    data = load_cfn(generated / variant / "flaskserve.yaml")["Resources"]["LaunchTemplate"]
    assert data["Properties"]["LaunchTemplateData"]["MetadataOptions"]["HttpTokens"] == "required"
    script = boot_script(generated / variant / "flaskserve.yaml",
                         {"ApiKeysSecretArn": SECRET_ARN})
    assert script.startswith("#!/bin/bash\n")
    return script, written_files(script)


def test_the_user_data_installs_the_wheel_beside_the_template_and_serves_from_s3(generated):
    script, files = instance_files(generated)
    unit = files["/etc/systemd/system/flaskserve.service"]
    assert (
        f"ExecStart=/opt/flaskserve/bin/flaskserve serve s3://{BUCKET}/{PREFIX} "
        f"--host 0.0.0.0 --port 8080 --grpc-port {GRPC_PORT}"
    ) in unit
    assert "User=flaskserve" in unit
    assert "systemctl enable --now flaskserve.service" in script
    assert (generated / "aws" / WHEEL).is_file()
    parameters = load_cfn(generated / "aws" / "flaskserve.yaml")["Parameters"]
    assert parameters["FlaskServeWheel"]["Default"] == f".flaskserve/{WHEEL}"
    assert 'SPEC="$WHEEL[s3,grpc]"' in script
    assert not list((generated / "aws-no-bucket").glob("*.whl"))
    published = load_cfn(generated / "aws-no-bucket" / "flaskserve.yaml")["Parameters"]
    assert published["FlaskServeWheel"]["Default"] == ""
    assert published["FlaskServeSpec"]["Default"] == PUBLISHED


def test_the_instances_ship_their_logs_and_take_ssm_sessions(generated):
    template = load_cfn(generated / "aws" / "flaskserve.yaml")
    resources = template["Resources"]
    role = resources["InstanceRole"]["Properties"]
    assert role["ManagedPolicyArns"] == [
        {"Fn::Sub": "arn:${AWS::Partition}:iam::aws:policy/AmazonSSMManagedInstanceCore"}
    ]
    (logs,) = [p for p in role["Policies"] if p["PolicyName"] == "write-instance-logs"]
    (statement,) = logs["PolicyDocument"]["Statement"]
    assert statement["Resource"] == {"Fn::GetAtt": ["InstanceLogs", "Arn"]}
    group = resources["InstanceLogs"]["Properties"]
    assert group["RetentionInDays"] == 30
    _, files = instance_files(generated)
    agent = json.loads(files["/opt/aws/amazon-cloudwatch-agent/etc/flaskserve.json"])
    shipped = {f["file_path"]: f["log_stream_name"]
               for f in agent["logs"]["logs_collected"]["files"]["collect_list"]}
    assert shipped == {
        "/var/log/cloud-init-output.log": "{instance_id}/cloud-init-output",
        "/var/log/cloud-init.log": "{instance_id}/cloud-init",
        "/var/log/flaskserve/journal.log": "{instance_id}/flaskserve",
    }
    journal = files["/etc/systemd/system/flaskserve-journal.service"]
    assert "--unit=flaskserve.service" in journal
    assert "StandardOutput=append:/var/log/flaskserve/journal.log" in journal


def test_the_instances_serve_with_keys_from_the_secret_the_stack_names(generated):
    template = load_cfn(generated / "aws" / "flaskserve.yaml")
    parameter = template["Parameters"]["ApiKeysSecretArn"]
    assert "Default" not in parameter  # no stack without keys
    assert re.fullmatch(parameter["AllowedPattern"], SECRET_ARN)
    assert not re.fullmatch(parameter["AllowedPattern"], "my-secret")
    (policy,) = [p for p in template["Resources"]["InstanceRole"]["Properties"]["Policies"]
                 if p["PolicyName"] == "read-model-repository"]
    (secret_read,) = [s for s in policy["PolicyDocument"]["Statement"]
                      if s["Action"].startswith("secretsmanager:")]
    assert secret_read["Resource"] == {"Ref": "ApiKeysSecretArn"}

    script, files = instance_files(generated)
    unit = files["/etc/systemd/system/flaskserve.service"]
    (start,) = re.findall(r"^ExecStart=(.*)$", unit, re.MULTILINE)
    assert f"--auth {KEYS_FILE} --usage-db /var/lib/flaskserve/usage.sqlite3" in start
    assert "--model-control" not in start
    fetch = f"/opt/flaskserve/bin/python /usr/local/bin/flaskserve-fetch-keys {KEYS_FILE}"
    assert f"\nExecStartPre={fetch}\n" in unit  # no keys, no start
    assert f"\nEnvironment=FLASKSERVE_KEYS_SECRET={SECRET_ARN}\n" in unit
    assert "\nStateDirectory=flaskserve\n" in unit  # /var/lib/flaskserve, writable
    refresh = files["/etc/systemd/system/flaskserve-keys.service"]
    assert f"\nExecStart={fetch}\n" in refresh and "\nUser=flaskserve\n" in refresh
    assert "OnUnitActiveSec=5min" in files["/etc/systemd/system/flaskserve-keys.timer"]
    assert "systemctl enable --now flaskserve-keys.timer" in script


def test_the_key_fetcher_installs_valid_keys_and_keeps_them_when_the_secret_breaks(
    generated, secrets_endpoint, tmp_path
):
    fetcher = tmp_path / "flaskserve-fetch-keys"
    fetcher.write_text(instance_files(generated)[1]["/usr/local/bin/flaskserve-fetch-keys"])
    made = tmp_path / "made.toml"
    admin = add_key(made, "ops", admin=True)
    target = tmp_path / "state" / "keys.toml"
    target.parent.mkdir()
    env = {**os.environ, "FLASKSERVE_KEYS_SECRET": SECRET_ARN, "AWS_ENDPOINT_URL": secrets_endpoint,
           "AWS_DEFAULT_REGION": "eu-west-1", "AWS_ACCESS_KEY_ID": "test",
           "AWS_SECRET_ACCESS_KEY": "test"}


    def fetch() -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, str(fetcher), str(target)], env=env,
                              capture_output=True, text=True, timeout=60)

    FakeSecretsManager.secrets[SECRET_ARN] = made.read_text()
    fetched = fetch()
    assert fetched.returncode == 0, fetched.stderr
    assert stat.S_IMODE(target.stat().st_mode) == 0o600
    assert KeyStore(target).authenticate(admin).admin

    FakeSecretsManager.secrets[SECRET_ARN] = "[keys.ops]\nhash = 'plain-text-key'\n"
    broken = fetch()
    assert broken.returncode != 0 and "keeping the keys in" in broken.stderr
    assert KeyStore(target).authenticate(admin).admin


def test_the_public_listeners_refuse_the_operator_routes(generated):
    resources = load_cfn(generated / "aws" / "flaskserve.yaml")["Resources"]
    rules = {r["Properties"]["ListenerArn"]["Ref"]: r for r in resources.values()
             if r["Type"] == "AWS::ElasticLoadBalancingV2::ListenerRule"}
    assert set(rules) == {"HttpListener", "HttpsListener", "GrpcListener"}
    grpc_rule = rules.pop("GrpcListener")
    assert grpc_rule["Condition"] == "HasCertificate"
    (condition,) = grpc_rule["Properties"]["Conditions"]
    grpc_patterns = condition["PathPatternConfig"]["Values"]
    assert [p for p in OPERATOR_RPCS
            if not any(fnmatch.fnmatchcase(p, g) for g in grpc_patterns)] == []
    assert [p for p in PUBLIC_RPCS if any(fnmatch.fnmatchcase(p, g) for g in grpc_patterns)] == []
    (action,) = grpc_rule["Properties"]["Actions"]
    assert action["FixedResponseConfig"]["StatusCode"] == "403"
    assert rules["HttpsListener"]["Condition"] == "HasCertificate"
    for rule in rules.values():
        (condition,) = rule["Properties"]["Conditions"]
        assert condition["Field"] == "path-pattern"
        patterns = condition["PathPatternConfig"]["Values"]
        # ALB path patterns: `*` is any characters, `?` one, case-sensitive like flaskserve.
        def refused(path: str, patterns: list[str] = patterns) -> bool:
            return any(fnmatch.fnmatchcase(path, pattern) for pattern in patterns)

        assert [p for p in OPERATOR_PATHS if not refused(p)] == []
        assert [p for p in PUBLIC_PATHS if refused(p)] == []
        (action,) = rule["Properties"]["Actions"]
        assert action["Type"] == "fixed-response"
        answer = action["FixedResponseConfig"]
        assert (answer["StatusCode"], answer["ContentType"]) == ("403", "application/json")
        assert "error" in json.loads(answer["MessageBody"])


def test_grpc_reaches_the_instances_through_an_https_listener_only_with_a_certificate(generated):
    template = load_cfn(generated / "aws" / "flaskserve.yaml")
    resources = template["Resources"]
    grpc_parts = ("GrpcTargetGroup", "GrpcListener", "GrpcClientsToLoadBalancer",
                  "LoadBalancerToInstancesGrpc", "InstancesFromLoadBalancerGrpc")
    assert {name: resources[name].get("Condition") for name in grpc_parts} == dict.fromkeys(
        grpc_parts, "HasCertificate"
    )
    assert template["Conditions"]["HasCertificate"] == {
        "Fn::Not": [{"Fn::Equals": [{"Ref": "CertificateArn"}, ""]}]
    }
    target_group = resources["GrpcTargetGroup"]["Properties"]
    assert (target_group["ProtocolVersion"], target_group["Port"]) == ("GRPC", GRPC_PORT)
    assert target_group["HealthCheckPath"] == "/grpc.health.v1.Health/Check"
    assert target_group["Matcher"] == {"GrpcCode": "0"}
    listener = resources["GrpcListener"]["Properties"]
    assert (listener["Protocol"], listener["Port"]) == ("HTTPS", GRPC_PORT)
    assert listener["Certificates"] == [{"CertificateArn": {"Ref": "CertificateArn"}}]
    assert listener["DefaultActions"] == [
        {"Type": "forward", "TargetGroupArn": {"Ref": "GrpcTargetGroup"}}
    ]
    clients = resources["GrpcClientsToLoadBalancer"]["Properties"]
    assert (clients["GroupId"], clients["FromPort"], clients["CidrIp"]) == (
        {"Ref": "LoadBalancerSecurityGroup"}, GRPC_PORT, {"Ref": "AllowedClientCidr"}
    )
    egress = resources["LoadBalancerToInstancesGrpc"]["Properties"]
    assert (egress["FromPort"], egress["DestinationSecurityGroupId"]) == (
        GRPC_PORT, {"Ref": "InstanceSecurityGroup"}
    )
    group = resources["AutoScalingGroup"]["Properties"]
    assert group["TargetGroupARNs"] == [
        {"Ref": "TargetGroup"},
        {"Fn::If": ["HasCertificate", {"Ref": "GrpcTargetGroup"}, {"Ref": "AWS::NoValue"}]},
    ]


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
    assert container["readinessProbe"]["grpc"] == {"port": GRPC_PORT}
    assert container["livenessProbe"]["httpGet"] == {"path": "/v2/health/live", "port": "http"}
    assert container["args"][:2] == ["serve", f"s3://{BUCKET}/{PREFIX}"]
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


@pytest.mark.parametrize("variant", ["k8s", "k8s-defaults"])
def test_the_pods_serve_grpc_on_8001_probed_there_and_the_service_exposes_it(generated, variant):
    (container,) = load_yaml(generated / variant / "deployment.yaml")["spec"]["template"]["spec"][
        "containers"
    ]
    ports = {p["name"]: p for p in container["ports"]}
    assert ports["grpc"] == {"name": "grpc", "containerPort": GRPC_PORT, "protocol": "TCP"}
    env = {e["name"]: e.get("value") for e in container["env"]}
    server = Settings.from_env({k: v for k, v in env.items() if k.startswith("FLASKSERVE_")})
    # The server listens where the port, the probe and the Service point.
    assert server.grpc_port == GRPC_PORT != server.port
    assert container["readinessProbe"]["grpc"]["port"] == ports["grpc"]["containerPort"]
    assert container["livenessProbe"]["httpGet"]["port"] == "http"
    service = load_yaml(generated / variant / "service.yaml")
    by_name = {p["name"]: p for p in service["spec"]["ports"]}
    assert by_name["grpc"] == {"name": "grpc", "port": GRPC_PORT, "targetPort": "grpc",
                               "protocol": "TCP", "appProtocol": "grpc"}
    assert by_name["http"]["targetPort"] == "http"


def check_keys_and_usage_mounts(container: dict, volumes: list[dict], name: str) -> None:
    """--auth reads a Secret mounted read-only; --usage-db writes to a writable emptyDir."""
    args = container["args"]
    keys_file = Path(args[args.index("--auth") + 1])
    usage_db = Path(args[args.index("--usage-db") + 1])
    assert "--model-control" not in args
    mounts = {m["mountPath"]: m for m in container["volumeMounts"]}
    by_name = {v["name"]: v for v in volumes}
    keys_mount = mounts[str(keys_file.parent)]
    assert keys_mount["readOnly"] is True
    secret = by_name[keys_mount["name"]]["secret"]
    assert secret["secretName"] == f"{name}-keys" and not secret.get("optional", False)
    usage_mount = mounts[str(usage_db.parent)]
    assert not usage_mount.get("readOnly", False)
    assert "emptyDir" in by_name[usage_mount["name"]]


@pytest.mark.parametrize("variant", ["k8s", "k8s-defaults"])
def test_the_pods_serve_with_keys_from_a_read_only_secret(generated, variant):
    pod = load_yaml(generated / variant / "deployment.yaml")["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    check_keys_and_usage_mounts(container, pod["volumes"], "flaskserve")


def test_only_the_ingress_controllers_namespace_reaches_the_pods(generated, tmp_path):
    def admitted(folder: Path) -> list[dict]:
        policy = load_yaml(folder / "networkpolicy.yaml")
        (rule,) = policy["spec"]["ingress"]
        assert rule["ports"] == [
            {"port": 8080, "protocol": "TCP"}, {"port": GRPC_PORT, "protocol": "TCP"}
        ]
        return rule["from"]

    selector = {"kubernetes.io/metadata.name": "ingress-nginx"}
    assert admitted(generated / "k8s") == [{"namespaceSelector": {"matchLabels": selector}}]
    traefik = generate(tmp_path / "k8s", "k8s", "--ingress-namespace", "traefik")
    selector = {"kubernetes.io/metadata.name": "traefik"}
    assert admitted(traefik) == [{"namespaceSelector": {"matchLabels": selector}}]


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
    args = container["args"]
    assert args[args.index("--grpc-port") + 1] == str(GRPC_PORT)
    assert "grpc-v2" in runtime["spec"]["protocolVersions"]
    # KServe routes a single port per predictor: HTTP here; inferenceservice.yaml says how to
    # switch to gRPC.
    assert container["ports"] == [{"containerPort": 8080, "protocol": "TCP"}]
    switch = (generated / "kserve" / "inferenceservice.yaml").read_text()
    assert f"#         - {{name: h2c, containerPort: {GRPC_PORT}, protocol: TCP}}" in switch
    check_keys_and_usage_mounts(container, runtime["spec"]["volumes"], "flaskserve")
    # KServe's CRDs are not shipped offline; validate the pod part as a core Pod.
    pod = {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "runtime"},
           "spec": {"containers": runtime["spec"]["containers"],
                    "volumes": runtime["spec"]["volumes"]}}
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
    ("target", "options", "message"),
    [
        ("aws", ["--bucket", "Not_A_Bucket"], "is not an S3 bucket name"),
        ("aws", ["--min-replicas", "5", "--max-replicas", "2"], "1 <= min (5) <= max (2)"),
        ("aws", ["--name", "Flask Serve"], "must be DNS labels"),
        ("k8s", ["--ingress-namespace", "Ingress_NGINX"], "must be DNS labels"),
        ("aws", ["--package", "flaskserve[s3]==0.1.0"], "lacks the grpc extra"),
        ("aws", ["--upload"], "--upload needs --bucket"),
    ],
)
def test_deploy_rejects_options_that_cannot_work(tmp_path, target, options, message):
    result = CliRunner().invoke(main, ["deploy", target, "--out", str(tmp_path), *options])
    assert result.exit_code in (1, 2)
    assert message in result.output
    assert not list(tmp_path.iterdir())


@pytest.mark.parametrize(
    ("target", "own", "others"),
    [
        ("aws", ["--instance-type", "--upload", "--models", "--package", "--max-replicas"],
         ["--namespace", "--image", "--ingress-namespace"]),
        ("docker", ["--image", "--package", "--bucket"],
         ["--max-replicas", "--instance-type", "--namespace"]),
        ("k8s", ["--namespace", "--ingress-namespace", "--image", "--max-replicas"],
         ["--instance-type", "--package", "--upload"]),
        ("kserve", ["--namespace", "--bucket", "--image"],
         ["--instance-type", "--max-replicas", "--ingress-namespace"]),
    ],
)
def test_each_target_has_help_naming_only_its_own_flags(target, own, others):
    result = CliRunner().invoke(main, ["deploy", target, "--help"])
    assert result.exit_code == 0, result.output
    flags = set(re.findall(r"--[a-z-]+", result.output))
    assert set(own) <= flags and not set(others) & flags


def test_uploading_a_model_folder_instead_of_a_repository_names_the_fix(tmp_path, digits_model):
    result = CliRunner().invoke(main, [
        "deploy", "aws", "--out", str(tmp_path / "aws"), "--bucket", BUCKET, "--upload",
        "--models", str(digits_model), "--package", PUBLISHED,
    ])
    assert result.exit_code == 2
    assert "is one model's folder" in result.output
    assert str(digits_model.parent) in result.output


def test_an_installed_flaskserve_packs_its_own_files_into_the_wheel(generated, tmp_path):
    """Outside a checkout, the wheel is packed from the installed package: the same files and
    metadata as the wheel pip built from the checkout."""
    import zipfile

    site = tmp_path / "site"
    with zipfile.ZipFile(generated / "aws" / WHEEL) as built:
        built.extractall(site)
        expected = sorted(n for n in built.namelist() if not n.endswith("/RECORD"))
    out = tmp_path / "out"
    code = ("import sys; from pathlib import Path; from flaskserve.deploy import package; "
            "assert package.checkout() is None; print(package.build_wheel(Path(sys.argv[1])))")
    env = {**os.environ, "PYTHONPATH": str(site)}
    packed = subprocess.run([sys.executable, "-c", code, str(out)], env=env, capture_output=True,
                            text=True, timeout=120)
    assert packed.returncode == 0, packed.stderr
    with zipfile.ZipFile(packed.stdout.strip()) as wheel:
        names = wheel.namelist()
        metadata = wheel.read("flaskserve-0.1.0.dist-info/METADATA").decode()
    assert sorted(n for n in names if not n.endswith("/RECORD")) == [
        n for n in expected if "dist-info" not in n or n.rsplit("/", 1)[1] in (
            "METADATA", "WHEEL", "entry_points.txt")
    ]
    assert "flaskserve/deploy/templates/aws/flaskserve.yaml" in names
    assert "Requires-Dist: granian" in metadata and "Provides-Extra: grpc" in metadata
