"""Real services for the tests: PostgreSQL, Redis, a moto S3 server, API and worker processes."""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import boto3
import httpx
import psycopg
import redis
from moto.server import ThreadedMotoServer

PG_ADMIN_DSN = os.environ.get("VLMQ_TEST_PG_DSN", "postgresql://postgres@127.0.0.1:5432/postgres")
REDIS_HOST_URL = os.environ.get("VLMQ_TEST_REDIS_URL", "redis://127.0.0.1:6379")
REPO_ROOT = Path(__file__).resolve().parents[2]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


AWS_ENV = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1"}


@contextmanager
def s3_server(bucket: str) -> Iterator[str]:
    """moto's S3 server on a free loopback port with one bucket; yields its endpoint URL."""
    os.environ.update(AWS_ENV)
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=free_port(), verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    endpoint = f"http://{host}:{port}"
    boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1").create_bucket(Bucket=bucket)
    try:
        yield endpoint
    finally:
        server.stop()


def wait_until(predicate, *, timeout_s: float, interval_s: float = 0.1, what: str = "condition"):
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval_s)
    raise TimeoutError(f"timed out after {timeout_s}s waiting for {what}")


def create_database() -> tuple[str, str]:
    """A fresh PostgreSQL database; returns (name, SQLAlchemy URL)."""
    name = f"vlmq_test_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(PG_ADMIN_DSN, autocommit=True) as connection:
        connection.execute(f'CREATE DATABASE "{name}"')
    base = PG_ADMIN_DSN.rsplit("/", 1)[0].replace("postgresql://", "postgresql+psycopg://")
    return name, f"{base}/{name}"


def drop_database(name: str) -> None:
    with psycopg.connect(PG_ADMIN_DSN, autocommit=True) as connection:
        connection.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def migrate(url: str, revision: str = "head", *, downgrade: bool = False) -> None:
    from alembic import command
    from alembic.config import Config

    config = Config(str(REPO_ROOT / "alembic.ini"))
    config.set_main_option("script_location", str(REPO_ROOT / "migrations"))
    config.set_main_option("sqlalchemy.url", url)
    config.attributes["configure_logger"] = False
    (command.downgrade if downgrade else command.upgrade)(config, revision)


def fresh_redis_url(db: int = 9) -> str:
    """A Redis database index of our own, emptied: the suite uses 9, benchmarks 10, the dev stack 0."""
    client = redis.Redis.from_url(f"{REDIS_HOST_URL}/{db}")
    client.flushdb()
    return f"{REDIS_HOST_URL}/{db}"


@dataclass
class ManagedProcess:
    name: str
    command: list[str]
    env: dict[str, str]
    log_path: Path
    process: subprocess.Popen | None = None

    def start(self) -> ManagedProcess:
        self._log = open(self.log_path, "ab")  # noqa: SIM115 - closed in stop
        self.process = subprocess.Popen(
            self.command, cwd=REPO_ROOT, env=self.env, stdout=self._log, stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        return self

    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def stop(self) -> None:
        if self.process is None:
            return
        if self.alive():
            os.killpg(self.process.pid, 15)
            try:
                self.process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, 9)
                self.process.wait()
        self._log.close()

    def log_tail(self, lines: int = 40) -> str:
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])


@dataclass
class Stack:
    """The API, an inference worker, the notifier and the frames worker against the same services."""

    env: dict[str, str]
    api_url: str
    data_dir: Path
    processes: list[ManagedProcess] = field(default_factory=list)
    metrics_urls: dict[str, str] = field(default_factory=dict)  # worker name → its /metrics server

    @classmethod
    def start(cls, env: dict[str, str], data_dir: Path, *, with_worker: bool = True) -> Stack:
        port = free_port()
        data_dir.mkdir(parents=True, exist_ok=True)
        env = {**env, "VLMQ_API_PORT": str(port), "VLMQ_API_HOST": "127.0.0.1", "VLMQ_DATA_DIR": str(data_dir)}
        stack = cls(env, f"http://127.0.0.1:{port}", data_dir)
        stack.processes.append(
            ManagedProcess("api", [sys.executable, "-m", "services.api"], env, data_dir / "api.log").start()
        )
        if with_worker:
            stack.add_worker("worker", metrics=True)
            # Three senders, so that a tenant at its webhook limit (2 in the suite) leaves one to the others.
            stack.processes.append(stack._celery("notifier", "services.notifier.app", pool="threads", concurrency=3))
            stack.processes.append(stack._celery("frames", "workers.frames.celery_app", pool="prefork", concurrency=1))
        try:
            wait_until(stack._ready, timeout_s=60, what="the API's /readyz")
        except TimeoutError:
            stack.stop()
            raise RuntimeError(f"API did not start:\n{stack.processes[0].log_tail()}") from None
        return stack

    def _celery(self, name: str, app: str, *, pool: str, concurrency: int | None, metrics: bool = True,
                **env_overrides: str) -> ManagedProcess:
        """A Celery worker; with ``metrics``, its /metrics and /healthz on a port of its own."""
        command = [
            sys.executable, "-m", "celery", "-A", app, "worker", "--pool", pool,
            *(["--concurrency", str(concurrency)] if concurrency else []), "-n", f"{name}-{self.env['VLMQ_API_PORT']}@%h", "--loglevel", "INFO", "--without-gossip", "--without-mingle",
        ]
        env = {**self.env, **env_overrides}
        if metrics:
            port = free_port()
            env["VLMQ_METRICS_PORT"] = str(port)
            self.metrics_urls[name] = f"http://127.0.0.1:{port}"
        return ManagedProcess(name, command, env, self.data_dir / f"{name}.log").start()

    def add_worker(self, name: str, *, metrics: bool = False, **env_overrides: str) -> ManagedProcess:
        """Another inference worker process against the same services (its threads: celery_app's)."""
        worker = self._celery(name, "workers.inference.celery_app", pool="threads", concurrency=None,
                              metrics=metrics, **env_overrides)
        self.processes.append(worker)
        return worker

    def _ready(self) -> bool:
        if not self.processes[0].alive():
            raise RuntimeError(f"API exited:\n{self.processes[0].log_tail()}")
        try:
            return httpx.get(f"{self.api_url}/readyz", timeout=2).status_code == 200
        except httpx.HTTPError:
            return False

    def stop(self) -> None:
        for process in reversed(self.processes):
            process.stop()


class RedisServer:
    """A Redis of a test's own on a free port, keeping nothing on disk, so it can be restarted
    (and lose every message) without touching the Redis the rest of the suite uses."""

    def __init__(self, data_dir: Path):
        self.port, self.data_dir = free_port(), data_dir
        self.process: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> RedisServer:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self.process = subprocess.Popen(
            ["redis-server", "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
             "--dir", str(self.data_dir)],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
        )
        wait_until(self._answers, timeout_s=20, what="redis-server")
        return self

    def _answers(self) -> bool:
        try:
            return bool(redis.Redis(port=self.port, socket_timeout=1).ping())
        except redis.RedisError:
            return False

    def stop(self) -> None:
        if self.process and self.process.poll() is None:
            self.process.kill()
            self.process.wait()

    def restart(self) -> None:
        self.stop()
        self.start()


class TcpRelay:
    """A real network fault: forwards loopback connections to ``target_port`` until cut, then
    resets every connection (open or new) until restored."""

    def __init__(self, target_port: int):
        self.target_port, self.port = target_port, free_port()
        self._up = threading.Event()
        self._up.set()
        self._listener = socket.create_server(("127.0.0.1", self.port))
        self._open: list[socket.socket] = []
        threading.Thread(target=self._accept, daemon=True).start()

    def cut(self) -> None:
        self._up.clear()
        for sock in self._open:
            with contextlib.suppress(OSError):
                sock.close()
        self._open.clear()

    def restore(self) -> None:
        self._up.set()

    def _accept(self) -> None:
        while True:
            client, _ = self._listener.accept()
            if not self._up.is_set():
                client.close()
                continue
            upstream = socket.create_connection(("127.0.0.1", self.target_port))
            self._open += [client, upstream]
            for source, sink in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pump, args=(source, sink), daemon=True).start()

    @staticmethod
    def _pump(source: socket.socket, sink: socket.socket) -> None:
        with contextlib.suppress(OSError):
            while data := source.recv(65536):
                sink.sendall(data)
        for sock in (source, sink):
            with contextlib.suppress(OSError):
                sock.close()


class PostgresServer:
    """A PostgreSQL cluster of a test's own (initdb in a temporary directory), so it can be stopped
    and started without touching the server the rest of the suite uses."""

    def __init__(self):
        # Directly under the system temp dir: as root, the cluster runs as the postgres user, who
        # must be able to reach it (pytest's own temp dirs are private to the current user).
        self.root = Path(tempfile.mkdtemp(prefix="vlmq-pg-"))
        self.data_dir, self.port = self.root / "data", free_port()
        self.bin = sorted(Path("/usr/lib/postgresql").glob("*/bin"), reverse=True)[0]
        self.url = f"postgresql+psycopg://vlmq@127.0.0.1:{self.port}/postgres"
        if os.geteuid() == 0:
            subprocess.run(["chown", "postgres", str(self.root)], check=True)
        self._run("initdb", "-D", str(self.data_dir), "-U", "vlmq", "--auth=trust", "--no-sync")

    def _run(self, tool: str, *args: str) -> None:
        command = [str(self.bin / tool), *args]
        if os.geteuid() == 0:  # PostgreSQL refuses to run as root
            command = ["runuser", "-u", "postgres", "--", *command]
        subprocess.run(command, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

    def remove(self) -> None:
        shutil.rmtree(self.root, ignore_errors=True)

    def start(self) -> PostgresServer:
        self._run("pg_ctl", "-D", str(self.data_dir), "-o", f"-p {self.port} -k {self.root} -h 127.0.0.1",
                  "-w", "-l", str(self.root / "server.log"), "start")
        return self

    def stop(self) -> None:
        self._run("pg_ctl", "-D", str(self.data_dir), "-m", "immediate", "-w", "stop")


@contextmanager
def isolated_stack(base_env: dict[str, str], data_dir: Path, *, with_worker: bool = True,
                   **env: str) -> Iterator[Stack]:
    """A stack of a test module's own: a fresh migrated PostgreSQL database and a Redis server that
    nothing else uses (``stack.redis``, ``stack.database_url``), with ``env`` over ``base_env``."""
    redis_server = RedisServer(data_dir / "redis").start()
    name, database_url = create_database()
    try:
        migrate(database_url)
        stack = Stack.start(
            {**base_env, "VLMQ_DATABASE_URL": database_url, "VLMQ_BROKER_URL": redis_server.url, **env},
            data_dir, with_worker=with_worker,
        )
        stack.redis, stack.database_url = redis_server, database_url
        try:
            yield stack
        finally:
            stack.stop()
    finally:
        redis_server.stop()
        drop_database(name)
