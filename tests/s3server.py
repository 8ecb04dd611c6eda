"""A real S3 endpoint for tests: moto's server mode in a subprocess on a free local port.

    with fake_aws_env(), running_server() as server:
        create_bucket(server.endpoint_url, "my-bucket")

The server speaks HTTP on 127.0.0.1; boto3 in this process is pointed at it and given fake
credentials through the environment (``fake_aws_env``), which is restored afterwards.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import TYPE_CHECKING

import boto3
from botocore.config import Config

from r2b.store.s3 import make_client

if TYPE_CHECKING:
    from mypy_boto3_s3 import S3Client

FAKE_ACCESS_KEY_ID = "testing"
FAKE_SECRET_ACCESS_KEY = "testing"
REGION = "us-east-1"

_FAKE_ENV = {
    "AWS_ACCESS_KEY_ID": FAKE_ACCESS_KEY_ID,
    "AWS_SECRET_ACCESS_KEY": FAKE_SECRET_ACCESS_KEY,
    "AWS_DEFAULT_REGION": REGION,
    # Keep a developer's ~/.aws (profiles, endpoints, credentials) out of the tests.
    "AWS_CONFIG_FILE": os.devnull,
    "AWS_SHARED_CREDENTIALS_FILE": os.devnull,
    "AWS_EC2_METADATA_DISABLED": "true",
}
_DROP_ENV = ("AWS_PROFILE", "AWS_SESSION_TOKEN", "AWS_SECURITY_TOKEN", "AWS_ENDPOINT_URL")


@dataclass
class S3Server:
    endpoint_url: str
    process: subprocess.Popen[bytes]
    log: Path

    def stop(self) -> None:
        """Terminate the server and wait for it (kill it if it does not stop)."""
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago (also: a closed port)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _moto_command(port: int) -> list[str]:
    exe = Path(sys.executable).with_name("moto_server")
    base = [str(exe)] if exe.exists() else [sys.executable, "-m", "moto.server"]
    return [*base, "-H", "127.0.0.1", "-p", str(port)]


def _answers(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=1):
            return True
    except urllib.error.HTTPError:
        return True  # any HTTP answer will do
    except OSError:
        return False


def start_server(timeout: float = 30.0) -> S3Server:
    """Start moto on a free port and wait until it answers HTTP."""
    port = free_port()
    log = Path(tempfile.mkstemp(prefix="moto-", suffix=".log")[1])
    with open(log, "wb") as out:  # a file, not a pipe: a full pipe would block the server
        process = subprocess.Popen(
            _moto_command(port), stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL
        )
    server = S3Server(f"http://127.0.0.1:{port}", process, log)
    deadline = time.monotonic() + timeout
    while not _answers(f"{server.endpoint_url}/moto-api/"):
        if process.poll() is not None or time.monotonic() > deadline:
            server.stop()
            raise RuntimeError(f"moto server did not start:\n{log.read_text()[-2000:]}")
        time.sleep(0.05)
    return server


@contextmanager
def running_server() -> Iterator[S3Server]:
    """A started moto server, stopped on exit."""
    server = start_server()
    try:
        yield server
    finally:
        server.stop()
        server.log.unlink(missing_ok=True)


@contextmanager
def fake_aws_env() -> Iterator[None]:
    """Fake credentials and region for boto3 in this process; the old environment after."""
    saved = {name: os.environ.get(name) for name in (*_FAKE_ENV, *_DROP_ENV)}
    for name in _DROP_ENV:
        os.environ.pop(name, None)
    os.environ.update(_FAKE_ENV)
    try:
        yield
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


@cache
def client(endpoint_url: str) -> S3Client:
    """A plain boto3 S3 client for the server (for setup and inspection in tests)."""
    return boto3.client(
        "s3",
        endpoint_url=endpoint_url,
        region_name=REGION,
        aws_access_key_id=FAKE_ACCESS_KEY_ID,
        aws_secret_access_key=FAKE_SECRET_ACCESS_KEY,
        config=Config(s3={"addressing_style": "path"}),
    )


@cache
def store_client(endpoint_url: str) -> S3Client:
    """A client configured as ``S3Store`` configures its own, shared (boto3 clients are
    thread-safe and slow to make)."""
    return make_client(endpoint_url)


def create_bucket(endpoint_url: str, name: str | None = None) -> str:
    """Create a bucket (a fresh uniquely named one by default) and return its name."""
    name = name or f"r2b-test-{uuid.uuid4().hex[:16]}"
    client(endpoint_url).create_bucket(Bucket=name)
    return name
