"""A real single-node Apache Kafka broker (KRaft), assembled from Maven Central jars.

The broker's jars are resolved once with Maven into ``<MKPI_STACK_DIR>/kafka-<version>/libs``;
storage is formatted once; the broker runs as a detached ``java`` process whose pid is
kept in a file. "Ready" means a metadata round trip succeeded, not that the port opened.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import logging
import os
import secrets
import shutil
import signal
import subprocess
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.errors import KafkaError

from agents.settings import Settings
from devtools.stack.process import StackError, pid_alive, port_is_open, read_pid, terminate_pid
from devtools.stack.settings import StackSettings
from devtools.stack.tls import LocalTls

log = logging.getLogger(__name__)

# Kafka's pom carries slf4j-api but no logging backend: add the one its release ships with.
LOGGING_BACKEND_3X = ("org.slf4j:slf4j-reload4j:1.7.36",)
LOGGING_BACKEND_4X = (
    "org.apache.logging.log4j:log4j-slf4j-impl:2.24.3",
    "org.apache.logging.log4j:log4j-core:2.24.3",
)

#: A broker log larger than this at start is moved to broker.log.1.
LOG_ROTATE_BYTES = 64 * 1024 * 1024

_POM_TEMPLATE = """<project xmlns="http://maven.apache.org/POM/4.0.0">
  <modelVersion>4.0.0</modelVersion>
  <groupId>local.mkpi</groupId>
  <artifactId>kafka-broker-libs</artifactId>
  <version>1</version>
  <packaging>pom</packaging>
  <dependencies>
{dependencies}
  </dependencies>
</project>
"""

_DEPENDENCY_TEMPLATE = """    <dependency>
      <groupId>{group}</groupId><artifactId>{artifact}</artifactId><version>{version}</version>
    </dependency>"""

_LOG4J1_CONFIG = """log4j.rootLogger=INFO, stdout
log4j.appender.stdout=org.apache.log4j.ConsoleAppender
log4j.appender.stdout.layout=org.apache.log4j.PatternLayout
log4j.appender.stdout.layout.ConversionPattern=[%d] %p %m (%c)%n
log4j.logger.kafka=INFO
log4j.logger.org.apache.kafka=INFO
log4j.logger.state.change.logger=WARN
log4j.logger.kafka.log.LogCleaner=WARN
"""

_LOG4J2_CONFIG = """status = warn
appender.console.type = Console
appender.console.name = STDOUT
appender.console.layout.type = PatternLayout
appender.console.layout.pattern = [%d] %p %m (%c)%n
rootLogger.level = info
rootLogger.appenderRef.stdout.ref = STDOUT
logger.statechange.name = state.change.logger
logger.statechange.level = warn
"""


@dataclass(frozen=True, slots=True)
class KafkaBroker:
    """Paths and ports of the project's local broker, derived from settings."""

    version: str
    home: Path
    host: str
    port: int
    controller_port: int
    heap: str
    #: 0: no such listener.
    sasl_ssl_port: int
    ssl_port: int

    @classmethod
    def from_settings(cls, settings: Settings, stack: StackSettings | None = None) -> KafkaBroker:
        """The broker that ``settings`` reach, as ``stack`` (default: the environment's) runs it."""
        stack = stack or StackSettings.from_env()
        host = settings.kafka.kafka_bootstrap.split(",")[0].rpartition(":")[0]
        return cls(
            version=stack.stack_kafka_version,
            home=stack.home / f"kafka-{stack.stack_kafka_version}",
            host=host,
            port=settings.kafka.port,
            controller_port=stack.stack_kafka_controller_port,
            heap=stack.stack_kafka_heap,
            sasl_ssl_port=stack.stack_kafka_sasl_ssl_port,
            ssl_port=stack.stack_kafka_ssl_port,
        )

    @property
    def bootstrap(self) -> str:
        return f"{self.host}:{self.port}"

    @property
    def libs_dir(self) -> Path:
        return self.home / "libs"

    @property
    def data_dir(self) -> Path:
        return self.home / f"data-{self.port}"

    @property
    def pid_file(self) -> Path:
        return self.data_dir / "broker.pid"

    @property
    def log_file(self) -> Path:
        return self.data_dir / "broker.log"

    @property
    def properties_file(self) -> Path:
        return self.data_dir / "server.properties"

    @property
    def tls(self) -> LocalTls:
        """The local CA and certificates of the SASL_SSL and SSL listeners."""
        return LocalTls(self.home / "tls")

    @property
    def scram_credentials_file(self) -> Path:
        return self.data_dir / "scram-user"

    @property
    def ports(self) -> tuple[int, ...]:
        return tuple(p for p in (self.port, self.controller_port, self.sasl_ssl_port, self.ssl_port) if p)

    def scram_credentials(self) -> tuple[str, str]:
        """The SCRAM user (name, password) the SASL_SSL listener accepts, made at start."""
        try:
            name, password = self.scram_credentials_file.read_text(encoding="utf-8").split()
        except (OSError, ValueError):
            raise StackError("the local broker has no SCRAM user yet: run `mkpi stack up`") from None
        return name, password

    @property
    def is_log4j2(self) -> bool:
        return int(self.version.split(".")[0]) >= 4

    def install(self) -> None:
        """Resolve the broker's jars from Maven Central once (a marker file records success)."""
        marker = self.libs_dir / ".complete"
        if marker.exists():
            return
        mvn = shutil.which("mvn")
        if mvn is None:
            raise StackError("Maven (mvn) is not on PATH; it is needed once to fetch Kafka's jars")
        _require_java()
        self.home.mkdir(parents=True, exist_ok=True)
        backend = LOGGING_BACKEND_4X if self.is_log4j2 else LOGGING_BACKEND_3X
        deps = [("org.apache.kafka", "kafka_2.13", self.version)]
        deps += [(g, a, v) for g, a, v in (coordinate.split(":") for coordinate in backend)]
        pom = _POM_TEMPLATE.format(
            dependencies="\n".join(
                _DEPENDENCY_TEMPLATE.format(group=g, artifact=a, version=v) for g, a, v in deps
            )
        )
        (self.home / "pom.xml").write_text(pom, encoding="utf-8")
        staging = self.home / "libs.partial"
        shutil.rmtree(staging, ignore_errors=True)
        log.info("resolving Apache Kafka %s jars with Maven into %s", self.version, self.libs_dir)
        result = subprocess.run(
            [
                mvn,
                "-B",
                "-q",
                "-f",
                str(self.home / "pom.xml"),
                "dependency:copy-dependencies",
                "-DincludeScope=runtime",
                f"-DoutputDirectory={staging}",
            ],
            capture_output=True,
            text=True,
            check=False,
        )
        if result.returncode != 0:
            raise StackError(
                f"Maven could not resolve org.apache.kafka:kafka_2.13:{self.version}:\n"
                + (result.stdout + result.stderr)[-3000:]
            )
        shutil.rmtree(self.libs_dir, ignore_errors=True)
        staging.rename(self.libs_dir)
        marker.write_text(self.version, encoding="utf-8")

    def _config_text(self) -> str:
        """server.properties. Besides PLAINTEXT (the project's own use) the broker listens with
        SASL_SSL and SCRAM, and with SSL requiring a client certificate, so the security
        settings can be tested against it."""
        listeners = {"PLAINTEXT": self.port, "SASL_SSL": self.sasl_ssl_port, "SSL": self.ssl_port}
        served = {name: port for name, port in listeners.items() if port}
        properties = {
            "process.roles": "broker,controller",
            "node.id": "1",
            "controller.quorum.voters": f"1@{self.host}:{self.controller_port}",
            "listeners": ",".join(
                [
                    *(f"{name}://{self.host}:{port}" for name, port in served.items()),
                    f"CONTROLLER://{self.host}:{self.controller_port}",
                ]
            ),
            "advertised.listeners": ",".join(f"{name}://{self.host}:{port}" for name, port in served.items()),
            "controller.listener.names": "CONTROLLER",
            "inter.broker.listener.name": "PLAINTEXT",
            "listener.security.protocol.map": ",".join(
                ["CONTROLLER:PLAINTEXT", *(f"{n}:{n}" for n in served)]
            ),
            "log.dirs": str(self.data_dir / "kraft-logs"),
            "num.partitions": "1",
            "auto.create.topics.enable": "false",
            "offsets.topic.replication.factor": "1",
            "offsets.topic.num.partitions": "10",
            "transaction.state.log.replication.factor": "1",
            "transaction.state.log.min.isr": "1",
            "transaction.state.log.num.partitions": "10",
            "group.initial.rebalance.delay.ms": "0",
            "log.cleaner.dedupe.buffer.size": str(32 * 1024 * 1024),
            "message.max.bytes": str(2 * 1024 * 1024),
        }
        if "SASL_SSL" in served or "SSL" in served:
            tls = self.tls
            properties |= {
                "ssl.keystore.type": "PEM",
                "ssl.keystore.location": str(tls.server_keystore_file),
                "ssl.truststore.type": "PEM",
                "ssl.truststore.location": str(tls.ca_file),
            }
        if "SASL_SSL" in served:
            properties["sasl.enabled.mechanisms"] = "SCRAM-SHA-256,SCRAM-SHA-512"
            for mechanism in ("scram-sha-256", "scram-sha-512"):
                properties[f"listener.name.sasl_ssl.{mechanism}.sasl.jaas.config"] = (
                    "org.apache.kafka.common.security.scram.ScramLoginModule required;"
                )
        if "SSL" in served:
            properties["listener.name.ssl.ssl.client.auth"] = "required"
        return "".join(f"{k}={v}\n" for k, v in properties.items())

    def _write_config(self) -> None:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        if self.sasl_ssl_port or self.ssl_port:
            self.tls.ensure()
        self.properties_file.write_text(self._config_text(), encoding="utf-8")
        log_config = _LOG4J2_CONFIG if self.is_log4j2 else _LOG4J1_CONFIG
        (self.data_dir / "log4j.properties").write_text(log_config, encoding="utf-8")

    def _java_command(self, main_class: str, *args: str) -> list[str]:
        java = _require_java()
        log_config = self.data_dir / "log4j.properties"
        log_flag = (
            f"-Dlog4j2.configurationFile={log_config}"
            if self.is_log4j2
            else f"-Dlog4j.configuration=file:{log_config}"
        )
        return [java, f"-Xmx{self.heap}", log_flag, "-cp", f"{self.libs_dir}/*", main_class, *args]

    def _format_storage(self) -> None:
        if (self.data_dir / "kraft-logs" / "meta.properties").exists():
            return
        cluster_id = base64.urlsafe_b64encode(uuid.uuid4().bytes).decode().rstrip("=")
        result = subprocess.run(
            self._java_command(
                "kafka.tools.StorageTool",
                "format",
                "-t",
                cluster_id,
                "-c",
                str(self.properties_file),
                "--ignore-formatted",
            ),
            capture_output=True,
            text=True,
            check=False,
        )
        if result.returncode != 0:
            raise StackError("formatting Kafka storage failed:\n" + (result.stdout + result.stderr)[-3000:])

    def is_ready(self, timeout: float = 5.0) -> bool:
        """True when a metadata round trip to the broker succeeds."""
        return asyncio.run(metadata_round_trip(self.bootstrap, timeout))

    def running_pid(self) -> int | None:
        pid = read_pid(self.pid_file)
        return pid if pid is not None and pid_alive(pid) else None

    def start(self, stall_seconds: float = 90.0, ceiling_seconds: float = 900.0) -> str:
        """Start the broker unless a healthy one answers; return what was done.

        A broker with many partitions on disk spends minutes loading their logs before it
        answers, so the wait goes on while its log keeps growing: it gives up after
        ``stall_seconds`` without a new log line, or after ``ceiling_seconds`` in all.
        """
        pid = self.running_pid()
        if self.is_ready():
            if pid is None or self._running_config() == self._config_text():
                self._ensure_scram_user()
                return f"reusing the Kafka broker answering at {self.bootstrap}"
            log.warning("the broker's configuration changed since it started; restarting it")
            terminate_pid(pid, grace_seconds=30)
        elif pid is not None:
            log.warning("broker process %s is alive but does not answer; restarting it", pid)
            terminate_pid(pid, grace_seconds=20)
        for port in self.ports:
            if port_is_open(self.host, port):
                raise StackError(
                    f"port {self.host}:{port} is taken by something that is not a healthy Kafka "
                    "broker of this project; free it or set MKPI_KAFKA_BOOTSTRAP / "
                    "MKPI_STACK_KAFKA_CONTROLLER_PORT to free ports"
                )
        self.install()
        self._write_config()
        self._format_storage()
        self._rotate_log()
        with open(self.log_file, "ab") as log_out:
            process = subprocess.Popen(
                self._java_command("kafka.Kafka", str(self.properties_file)),
                stdout=log_out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
            )
        self.pid_file.write_text(str(process.pid), encoding="utf-8")
        started = time.monotonic()
        last_progress, log_size = started, self.log_file.stat().st_size
        while True:
            if process.poll() is not None:
                raise StackError(
                    f"the Kafka broker exited with status {process.returncode}; "
                    f"last lines of {self.log_file}:\n{_tail(self.log_file)}"
                )
            if self.is_ready(timeout=2.0):
                self._ensure_scram_user()
                return f"started Apache Kafka {self.version} (pid {process.pid}) at {self.bootstrap}"
            now = time.monotonic()
            if (size := self.log_file.stat().st_size) != log_size:
                last_progress, log_size = now, size
            if now - last_progress > stall_seconds or now - started > ceiling_seconds:
                break
            time.sleep(0.5)
        terminate_pid(process.pid, grace_seconds=20)
        raise StackError(
            f"the Kafka broker did not answer within {now - started:.0f}s "
            f"({now - last_progress:.0f}s since its last log line); see {self.log_file}:\n"
            + _tail(self.log_file)
        )

    def _rotate_log(self) -> None:
        """Keep the log of this start and of the one before: test sessions create thousands of
        topics, and the broker logs each, so one file would grow by hundreds of MB a week."""
        if self.log_file.exists() and self.log_file.stat().st_size > LOG_ROTATE_BYTES:
            self.log_file.replace(self.log_file.with_name(self.log_file.name + ".1"))

    def _running_config(self) -> str | None:
        try:
            return self.properties_file.read_text(encoding="utf-8")
        except OSError:
            return None

    def _ensure_scram_user(self) -> None:
        """Give the SASL_SSL listener a SCRAM user (both mechanisms) with a random password,
        once per data directory; Kafka keeps SCRAM credentials in its metadata log."""
        if not self.sasl_ssl_port or self.scram_credentials_file.exists():
            return
        name, password = "mkpi", secrets.token_urlsafe(24)
        for bits in (256, 512):  # one mechanism per request: the broker refuses two at once
            result = subprocess.run(
                self._java_command(
                    "kafka.admin.ConfigCommand",
                    "--bootstrap-server",
                    self.bootstrap,
                    "--alter",
                    "--add-config",
                    f"SCRAM-SHA-{bits}=[iterations=8192,password={password}]",
                    "--entity-type",
                    "users",
                    "--entity-name",
                    name,
                ),
                capture_output=True,
                text=True,
                check=False,
            )
            if result.returncode != 0:
                output = (result.stdout + result.stderr).replace(password, "***")
                raise StackError(f"creating the local broker's SCRAM user failed:\n{output[-3000:]}")
        self.scram_credentials_file.write_text(f"{name}\n{password}\n", encoding="utf-8")
        self.scram_credentials_file.chmod(0o600)

    def stop(self) -> str:
        pid = self.running_pid()
        if pid is None:
            return "no Kafka broker of this project is running"
        terminate_pid(pid, grace_seconds=30)
        self.pid_file.unlink(missing_ok=True)
        return f"stopped the Kafka broker (pid {pid})"

    def kill(self) -> None:
        """SIGKILL the broker (for fault-injection tests)."""
        pid = self.running_pid()
        if pid is not None:
            os.kill(pid, signal.SIGKILL)
            deadline = time.monotonic() + 10
            # The JVM's main thread turns zombie before its other threads have exited and let go
            # of the listening sockets, so wait for the ports too.
            while time.monotonic() < deadline and (
                pid_alive(pid) or any(port_is_open(self.host, p) for p in (self.port, self.controller_port))
            ):
                time.sleep(0.05)


async def metadata_round_trip(bootstrap: str, timeout: float) -> bool:
    host, _, port = bootstrap.rpartition(":")
    if not port_is_open(host, int(port)):
        return False
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap, request_timeout_ms=int(timeout * 1000))
    try:
        await asyncio.wait_for(admin.start(), timeout)
        await asyncio.wait_for(admin.list_topics(), timeout)
        return True
    except (TimeoutError, KafkaError, OSError):
        return False
    finally:
        with contextlib.suppress(KafkaError, OSError):
            await admin.close()


def _require_java() -> str:
    java = shutil.which("java")
    if java is None:
        raise StackError("java is not on PATH; Apache Kafka needs a Java 17 runtime")
    return java


def _tail(path: Path, lines: int = 30) -> str:
    try:
        return "\n".join(path.read_text(encoding="utf-8", errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"
