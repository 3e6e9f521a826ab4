"""Debian's redis-server, started on loopback when nothing answers at the configured URL."""

from __future__ import annotations

import shutil
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlparse

import redis
import redis.exceptions

from agents.redis.connections import sync_redis_client
from agents.settings import Settings, without_password
from devtools.stack.process import StackError, pid_alive, port_is_open, read_pid, terminate_pid
from devtools.stack.settings import StackSettings

LOOPBACK_HOSTS = ("127.0.0.1", "localhost", "::1")
#: The append-only file's folder under the server's data folder.
AOF_FOLDER = "appendonly"


@dataclass(frozen=True, slots=True)
class LocalRedis:
    settings: Settings
    host: str
    port: int
    home: Path

    @classmethod
    def from_settings(cls, settings: Settings, stack: StackSettings | None = None) -> LocalRedis:
        """The server that ``settings`` reach, with its data under ``stack``'s folder (default:
        the environment's)."""
        stack = stack or StackSettings.from_env()
        parsed = urlparse(settings.redis.redis_url)
        return cls(
            settings=settings,
            host=parsed.hostname or "127.0.0.1",
            port=parsed.port or 6379,
            home=stack.home / f"redis-{parsed.port or 6379}",
        )

    @property
    def url(self) -> str:
        return self.settings.redis.redis_url

    @property
    def pid_file(self) -> Path:
        return self.home / "redis.pid"

    def is_ready(self) -> bool:
        client = sync_redis_client(self.settings, socket_timeout=2, socket_connect_timeout=2)
        try:
            return bool(client.ping())
        except (redis.exceptions.RedisError, OSError):
            return False
        finally:
            client.close()

    def running_pid(self) -> int | None:
        pid = read_pid(self.pid_file)
        return pid if pid is not None and pid_alive(pid) else None

    def start(self, wait_seconds: float = 20.0) -> str:
        if self.is_ready():
            return f"reusing the Redis server answering at {without_password(self.url)}"
        if self.host not in LOOPBACK_HOSTS:
            raise StackError(
                f"no Redis answers at {without_password(self.url)}, and it is not on loopback, so it is not "
                "this project's to start; fix MKPI_REDIS_URL"
            )
        if port_is_open(self.host, self.port):
            raise StackError(
                f"port {self.host}:{self.port} is open but does not answer Redis PING "
                "(wrong password, or another program): set MKPI_REDIS_URL"
            )
        server = shutil.which("redis-server") or (
            "/usr/bin/redis-server" if Path("/usr/bin/redis-server").exists() else None
        )
        if server is None:
            raise StackError("redis-server is not installed: apt-get install redis-server")
        self.home.mkdir(parents=True, exist_ok=True)
        process = subprocess.Popen(
            [
                server,
                "--bind",
                self.host,
                "--port",
                str(self.port),
                "--dir",
                str(self.home),
                # Persisted: the view and the visitor sketches survive a restart (fsync every
                # second: a crash loses at most the last second's writes, which the KPI agent
                # writes again with the next updates of those series).
                "--save",
                "",
                "--appendonly",
                "yes",
                "--appendfsync",
                "everysec",
                "--appenddirname",
                AOF_FOLDER,
                "--maxmemory-policy",
                "noeviction",
                "--protected-mode",
                "yes",
                "--logfile",
                str(self.home / "redis.log"),
            ],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )
        self.pid_file.write_text(str(process.pid), encoding="utf-8")
        deadline = time.monotonic() + wait_seconds
        while time.monotonic() < deadline:
            if process.poll() is not None:
                raise StackError(
                    f"redis-server exited with status {process.returncode}; see {self.home}/redis.log"
                )
            if self.is_ready():
                return f"started redis-server (pid {process.pid}) at {without_password(self.url)}"
            time.sleep(0.2)
        raise StackError(f"redis-server did not answer PING within {wait_seconds:.0f}s")

    def stop(self) -> str:
        """Stop the server (SIGTERM: it writes its append-only file out and exits)."""
        pid = self.running_pid()
        if pid is None:
            return "no Redis server of this project is running"
        terminate_pid(pid, grace_seconds=10)
        self.pid_file.unlink(missing_ok=True)
        return f"stopped redis-server (pid {pid})"
