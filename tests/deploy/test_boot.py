"""The EC2 instances' first boot, run for real: the stack's user data script, then its server.

`flaskserve deploy aws --upload --models ...` writes the template and a wheel of this checkout
and uploads both the wheel and the model repository to S3 (SeaweedFS on loopback). The launch
template's user data, rendered as CloudFormation would, then runs under bash in a sandbox that
is as close to an instance as this machine allows:

- every path it writes is below a fresh root folder (FLASKSERVE_BOOT_ROOT), and it creates a
  fresh virtualenv there with the interpreter's `-m venv`, downloads the wheel from the bucket
  with boto3 and pip-installs it;
- what the sandbox cannot do is skipped (FLASKSERVE_BOOT_ON_INSTANCE=no): `dnf install`, the
  `flaskserve` user, systemctl and the CloudWatch agent;
- to keep it fast on 2 cores and offline, pip takes the wheel's dependencies from this test
  environment's site-packages (on PYTHONPATH, with PIP_NO_INDEX=1), so it installs only the
  wheel; on an instance they come from the public index;
- AWS calls go to the local S3 server and to a local Secrets Manager stand-in
  (AWS_ENDPOINT_URL_S3, AWS_ENDPOINT_URL_SECRETS_MANAGER), with test credentials in place of
  the instance role's;
- systemd is not here: the test reads `flaskserve.service` as the script wrote it and runs its
  ExecStartPre and ExecStart command lines with its Environment= lines, binding 127.0.0.1 and
  free ports instead of 0.0.0.0:8080 and 8001 (after checking those are the load balancer's).

The Dockerfile's entry command (ENTRYPOINT + CMD, with its ENV) runs the same way from that
virtualenv, without building an image.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
import sys
import sysconfig
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests
from click.testing import CliRunner
from fake_secrets import FakeSecretsManager, secrets_manager
from seaweed import SeaweedS3, client_env, free_port
from stack import boot_script, load_cfn

from flaskserve.cli import main
from flaskserve.gate.keys import add_key
from servers import stop_process_group
from waiting import eventually

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

PREFIX = "prod/models/"
SECRET_ARN = "arn:aws:secretsmanager:us-east-1:123456789012:secret:flaskserve/api-keys-AbCdEf"
SAMPLE = {"inputs": [{"name": "input", "datatype": "FP32", "shape": [1, 64],
                      "data": [0.0, 0.0, 5.0, 13.0, 9.0, 1.0, 0.0, 0.0] * 8}]}


def sandbox_env(s3: SeaweedS3, secrets: str, extra: dict[str, str]) -> dict[str, str]:
    """An instance's environment, pointed at the local stand-ins; the test's own site-packages
    stand in for the public index (see the module docstring)."""
    site = sorted({sysconfig.get_paths()["purelib"], sysconfig.get_paths()["platlib"]})
    env = {key: value for key, value in os.environ.items()
           if not key.startswith(("AWS_", "FLASKSERVE_", "PIP_", "PYTHON"))}
    return {
        **env, **client_env(s3.endpoint),
        "AWS_ENDPOINT_URL_S3": s3.endpoint, "AWS_ENDPOINT_URL_SECRETS_MANAGER": secrets,
        "PYTHONPATH": os.pathsep.join(site), "PIP_NO_INDEX": "1",
        "PIP_DISABLE_PIP_VERSION_CHECK": "1", **extra,
    }


def unit_settings(unit: str) -> tuple[dict[str, str], list[str], list[str]]:
    """Environment=, ExecStartPre= and ExecStart= of a systemd unit."""
    env = dict(line.split("=", 1) for line in re.findall(r"^Environment=(.*)$", unit, re.M))
    (pre,) = re.findall(r"^ExecStartPre=(.*)$", unit, re.M)
    (start,) = re.findall(r"^ExecStart=(.*)$", unit, re.M)
    return env, shlex.split(pre), shlex.split(start)


def replace_flag(args: list[str], flag: str, expected: str, value: str) -> list[str]:
    index = args.index(flag) + 1
    assert args[index] == expected, (flag, args)
    return [*args[:index], value, *args[index + 1 :]]


@pytest.fixture
def serving() -> Iterator[list[subprocess.Popen[bytes]]]:
    processes: list[subprocess.Popen[bytes]] = []
    yield processes
    for process in processes:
        stop_process_group(process)


@pytest.fixture(scope="module")
def secrets_endpoint() -> Iterator[str]:
    with secrets_manager() as endpoint:
        yield endpoint


@pytest.fixture(scope="module")
def booted(s3_server, secrets_endpoint, digits_repo, tmp_path_factory) -> Iterator[dict]:
    """The stack generated and uploaded by the command, and the boot script run in a sandbox:
    once for the module, as an instance boots once."""
    tmp_path = tmp_path_factory.mktemp("boot")
    bucket = f"boot-{uuid.uuid4().hex[:12]}"
    s3_server.client().create_bucket(Bucket=bucket)
    with pytest.MonkeyPatch.context() as monkeypatch:
        for key, value in client_env(s3_server.endpoint).items():
            monkeypatch.setenv(key, value)
        yield _boot(s3_server, secrets_endpoint, digits_repo, tmp_path, bucket)


def _boot(s3_server: SeaweedS3, secrets_endpoint: str, digits_repo: Path, tmp_path: Path,
          bucket: str) -> dict:
    generated = CliRunner().invoke(main, [
        "deploy", "aws", "--bucket", bucket, "--prefix", PREFIX, "--out", str(tmp_path / "aws"),
        "--upload", "--models", str(digits_repo),
    ])
    assert generated.exit_code == 0, generated.output
    key = add_key(tmp_path / "keys.toml", "alice", models=("digits",))
    FakeSecretsManager.secrets[SECRET_ARN] = (tmp_path / "keys.toml").read_text()

    script = tmp_path / "user-data.sh"
    script.write_text(boot_script(tmp_path / "aws" / "flaskserve.yaml",
                                  {"ApiKeysSecretArn": SECRET_ARN}))
    root = tmp_path / "root"
    python = Path(sys.base_prefix) / "bin" / f"python{sys.version_info[0]}.{sys.version_info[1]}"
    env = sandbox_env(s3_server, secrets_endpoint, {
        "FLASKSERVE_BOOT_ROOT": str(root), "FLASKSERVE_BOOT_PYTHON": str(python),
        "FLASKSERVE_BOOT_ON_INSTANCE": "no",
    })
    boot = subprocess.run(["bash", str(script)], env=env, capture_output=True, text=True,
                          timeout=300)
    assert boot.returncode == 0, boot.stdout[-3000:] + boot.stderr[-3000:]
    return {"root": root, "env": env, "key": key, "bucket": bucket,
            "template": load_cfn(tmp_path / "aws" / "flaskserve.yaml")}


def test_the_boot_script_installs_the_uploaded_wheel_and_serves_with_keys(booted, serving):
    root, env = booted["root"], booted["env"]
    installed = subprocess.run(
        [str(root / "opt/flaskserve/bin/python"), "-c",
         "import flaskserve; print(flaskserve.__file__)"],
        env=env, capture_output=True, text=True, timeout=60,
    )
    assert installed.stdout.startswith(str(root / "opt/flaskserve/lib")), installed

    unit = (root / "etc/systemd/system/flaskserve.service").read_text()
    unit_env, pre, start = unit_settings(unit)
    fetched = subprocess.run(pre, env={**env, **unit_env}, capture_output=True, text=True,
                             timeout=60)
    assert fetched.returncode == 0, fetched.stderr
    # The port the load balancer's health check and traffic use is the port the unit serves on.
    target_group = booted["template"]["Resources"]["TargetGroup"]["Properties"]
    health = target_group["HealthCheckPath"]
    port, grpc_port = free_port(), free_port()
    start = replace_flag(start, "--port", str(target_group["Port"]), str(port))
    start = replace_flag(start, "--host", "0.0.0.0", "127.0.0.1")
    start = replace_flag(start, "--grpc-port", "8001", str(grpc_port))
    assert start[1:3] == ["serve", f"s3://{booted['bucket']}/{PREFIX}"]
    log = open(root / "server.log", "wb")
    serving.append(subprocess.Popen(start, env={**env, **unit_env}, stdout=log,
                                    stderr=subprocess.STDOUT, start_new_session=True))
    url = f"http://127.0.0.1:{port}"

    def healthy() -> bool:
        assert serving[0].poll() is None, (root / "server.log").read_text()
        try:
            return requests.get(url + health, timeout=5).status_code == 200
        except requests.RequestException:
            return False

    eventually(healthy, timeout=90, message=lambda: (root / "server.log").read_text())
    infer = f"{url}/v2/models/digits/infer"
    answer = requests.post(infer, json=SAMPLE, timeout=30,
                           headers={"Authorization": f"Bearer {booted['key']}"})
    assert answer.status_code == 200, answer.text
    (label,) = [o for o in answer.json()["outputs"] if o["name"] == "label"]
    assert label["data"][0] in range(10)
    refused = requests.post(infer, json=SAMPLE, timeout=30)
    assert refused.status_code == 401, refused.text
    assert "error" in refused.json()


def test_the_dockerfiles_entry_command_serves_the_models_from_s3(
    booted, serving, tmp_path
):
    """ENTRYPOINT + CMD of `deploy docker --bucket`, with the image's ENV, from the same venv."""
    out = tmp_path / "docker"
    generated = CliRunner().invoke(main, [
        "deploy", "docker", "--bucket", booted["bucket"], "--prefix", PREFIX, "--out", str(out),
    ])
    assert generated.exit_code == 0, generated.output
    assert (out / "flaskserve-0.1.0-py3-none-any.whl").is_file()
    text = (out / "Dockerfile").read_text()
    entrypoint = re.findall(r"^ENTRYPOINT (\[.*\])$", text, re.M)[-1]
    command = re.findall(r"^CMD (\[.*\])$", text, re.M)[-1]
    env_block = re.search(r"^ENV PATH=.*?(?=^\S)", text, re.M | re.S).group(0)
    image_env = dict(re.findall(r"(FLASKSERVE_\w+)=(\S+)", env_block))
    port, grpc_port = free_port(), free_port()
    assert (image_env.pop("FLASKSERVE_PORT"), image_env.pop("FLASKSERVE_GRPC_PORT")) == (
        "8080", "8001"
    )
    image_env |= {"FLASKSERVE_PORT": str(port), "FLASKSERVE_GRPC_PORT": str(grpc_port),
                  "FLASKSERVE_HOST": "127.0.0.1", "FLASKSERVE_CACHE_DIR": str(tmp_path / "c")}
    venv_bin = booted["root"] / "opt/flaskserve/bin"
    args = [*json.loads(entrypoint), *json.loads(command)]
    assert args == ["flaskserve", "serve", f"s3://{booted['bucket']}/{PREFIX}"]
    env = {**booted["env"], **image_env, "PATH": f"{venv_bin}:{os.environ['PATH']}"}
    log = open(tmp_path / "docker.log", "wb")
    serving.append(subprocess.Popen(args, env=env, stdout=log, stderr=subprocess.STDOUT,
                                    start_new_session=True))
    url = f"http://127.0.0.1:{port}"
    health = re.search(r"urlopen\('http://127.0.0.1:%s(/[^']+)'", text).group(1)

    def healthy() -> bool:
        assert serving[0].poll() is None, (tmp_path / "docker.log").read_text()
        try:
            return requests.get(url + health, timeout=5).status_code == 200
        except requests.RequestException:
            return False

    eventually(healthy, timeout=90, message=lambda: (tmp_path / "docker.log").read_text())
    answer = requests.post(f"{url}/v2/models/digits/infer", json=SAMPLE, timeout=30)
    assert answer.status_code == 200, answer.text
