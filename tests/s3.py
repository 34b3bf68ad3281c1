"""A real S3-API server on loopback for the object storage tests: moto's server mode.

from tests import s3
s3_server = s3.s3_server        # session: one server, started and stopped by the tests
s3_storage = s3.s3_storage      # per test: a fresh bucket, STORAGE_BACKEND=s3 settings
"""

from __future__ import annotations

import socket
import uuid
from collections.abc import Iterator
from dataclasses import dataclass

import boto3
import pytest

ACCESS_KEY = "ccm-test-access"
SECRET_KEY = "ccm-test-secret"
REGION = "eu-west-1"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@dataclass
class S3Server:
    endpoint_url: str

    def client(self):
        return boto3.client(
            "s3",
            endpoint_url=self.endpoint_url,
            aws_access_key_id=ACCESS_KEY,
            aws_secret_access_key=SECRET_KEY,
            region_name=REGION,
        )

    def bucket_create(self) -> str:
        name = f"ccm-{uuid.uuid4().hex[:12]}"
        self.client().create_bucket(
            Bucket=name, CreateBucketConfiguration={"LocationConstraint": REGION}
        )
        return name

    def env(self, bucket: str) -> dict[str, str]:
        """The environment a CCM process needs to use this server (as docs/deployment.md)."""
        return {
            "STORAGE_BACKEND": "s3",
            "AWS_STORAGE_BUCKET_NAME": bucket,
            "AWS_S3_ENDPOINT_URL": self.endpoint_url,
            "AWS_S3_REGION_NAME": REGION,
            "AWS_ACCESS_KEY_ID": ACCESS_KEY,
            "AWS_SECRET_ACCESS_KEY": SECRET_KEY,
        }


@pytest.fixture(scope="session")
def s3_server() -> Iterator[S3Server]:
    from moto.server import ThreadedMotoServer

    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    try:
        yield S3Server(endpoint_url=f"http://127.0.0.1:{port}")
    finally:
        server.stop()


def storage_settings(server: S3Server, bucket: str) -> dict:
    """STORAGES["default"] exactly as ccm/settings.py builds it for STORAGE_BACKEND=s3."""
    import os
    import subprocess
    import sys

    code = "import json, django; django.setup(); from django.conf import settings; " + (
        "print(json.dumps(settings.STORAGES['default']))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code],
        env={**os.environ, **server.env(bucket), "DJANGO_SETTINGS_MODULE": "ccm.settings"},
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    )
    import json

    return json.loads(out.stdout.strip().splitlines()[-1])


@pytest.fixture(scope="session")
def s3_storage_settings(s3_server) -> dict:
    return storage_settings(s3_server, "bucket-placeholder")


@pytest.fixture
def s3_storage(s3_server, s3_storage_settings, settings) -> tuple[S3Server, str]:
    """Documents, print streams and attachments go to a fresh bucket for this test."""
    bucket = s3_server.bucket_create()
    default = {
        **s3_storage_settings,
        "OPTIONS": {**s3_storage_settings["OPTIONS"], "bucket_name": bucket},
    }
    settings.STORAGES = {**settings.STORAGES, "default": default}
    return s3_server, bucket


def stored_object(server: S3Server, bucket: str, name: str) -> tuple[bytes, dict]:
    """The object's bytes and metadata as the S3 server holds them (not through Django)."""
    client = server.client()
    body = client.get_object(Bucket=bucket, Key=name)["Body"].read()
    head = client.head_object(Bucket=bucket, Key=name)
    return body, head
