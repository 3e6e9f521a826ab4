"""Typed settings in sections, read from environment variables and an optional TOML file.

One rule names every setting: a field is named as its variable, without ``MKPI_`` and in lower
case, in every section (``kafka.kafka_bootstrap`` is ``MKPI_KAFKA_BOOTSTRAP``,
``windows.grace_seconds`` is ``MKPI_GRACE_SECONDS``), so searching the code for a variable's
name finds where it is used. A TOML file named by ``MKPI_CONFIG_FILE`` may set the same names;
the environment wins over the file. Validation happens once, at start-up, and each problem
names the variable to fix.

These are the settings of the product: a worker's, and of the commands that talk to its Kafka
and Redis. The local development stack reads its own ``MKPI_STACK_*`` variables
(``devtools.stack.settings``), which this loader leaves to it.
"""

from __future__ import annotations

import dataclasses
import difflib
import ipaddress
import os
import re
import socket
import tomllib
from collections.abc import Callable, Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any, ClassVar
from urllib.parse import urlparse
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from streams.core.ingestor import IngestPolicy
from streams.core.windows import Windowing, WindowPolicy, parse_sizes

ENV_PREFIX = "MKPI_"
CONFIG_FILE_VARIABLE = "MKPI_CONFIG_FILE"
#: Variables of the local development stack and its install scripts, not of a worker.
STACK_ENV_PREFIX = "MKPI_STACK_"


class ConfigError(ValueError):
    """One or more settings are invalid; the message lists what to fix."""


def _default_data_dir() -> str:
    return str(Path.home() / ".cache" / "mkpi" / "worker-data")


#: ``scheme:[//]user:password@``, however malformed the rest: the password is what to hide.
_CREDENTIALS = re.compile(r"([A-Za-z][A-Za-z0-9+.-]*:/*[^/@:\s]*):[^\s/]*@")


def without_password(url: str) -> str:
    """``url`` with the password of its user part masked, for messages and logs; also in a
    value that is not a valid URL (``redis:/user:secret@host``)."""
    return _CREDENTIALS.sub(r"\1:***@", url)


@dataclasses.dataclass(frozen=True, slots=True)
class KafkaSettings:
    """How every client reaches the brokers."""

    kafka_bootstrap: str = "127.0.0.1:9092"
    #: PLAINTEXT, SSL, SASL_PLAINTEXT or SASL_SSL, as the broker's listener expects.
    kafka_security_protocol: str = "PLAINTEXT"
    #: SCRAM-SHA-512, SCRAM-SHA-256 or PLAIN (SASL protocols only).
    kafka_sasl_mechanism: str = "SCRAM-SHA-512"
    kafka_sasl_username: str = ""
    kafka_sasl_password: str = dataclasses.field(default="", repr=False)
    #: PEM file of the CA(s) the broker's certificate must chain to; empty: the system's CAs.
    kafka_tls_ca_file: str = ""
    #: PEM client certificate and key, for brokers that require client authentication.
    kafka_tls_cert_file: str = ""
    kafka_tls_key_file: str = ""
    #: How long a worker may go silent before the broker hands its partitions to the others.
    kafka_session_timeout_seconds: int = 30

    @property
    def port(self) -> int:
        return _split_host_port(self.kafka_bootstrap.split(",")[0])[1]


#: The Faust table of KPI cells: its changelog topic and its stores on disk are named after it.
KPI_TABLE_NAME = "kpi-values"


@dataclasses.dataclass(frozen=True, slots=True)
class TopicSettings:
    """The raw topic, and the prefix every topic, group and Redis key of mkpi's own carries."""

    raw_topic: str = "marketing.events.raw"
    topic_prefix: str = "mkpi"
    partitions: int = 3
    #: Copies of each topic mkpi creates, the table's changelog (which exactness rests on)
    #: included: 1 for the single local broker, 3 in production (with min.insync.replicas=2).
    replication_factor: int = 1
    #: Whether producers key raw events by subject (user id, else anonymous id; an email
    #: event's recipient), so a subject's events and an event's retries share a raw partition.
    #: When not, ingest first repartitions the raw topic by subject through an internal topic.
    raw_keyed_by_subject: bool = False

    @property
    def app_id(self) -> str:
        """Faust application id: names the consumer group and changelog topics."""
        return self.topic_prefix

    @property
    def kpi_table_changelog_topic(self) -> str:
        """The KPI table's changelog (Faust names it after the app and the table)."""
        return f"{self.app_id}-{KPI_TABLE_NAME}-changelog"

    @property
    def deltas_topic(self) -> str:
        return f"{self.topic_prefix}.kpi-deltas"

    @property
    def kpi_updates_topic(self) -> str:
        return f"{self.topic_prefix}.kpi-updates"

    @property
    def window_results_topic(self) -> str:
        return f"{self.topic_prefix}.kpi-windows"

    @property
    def late_events_topic(self) -> str:
        return f"{self.topic_prefix}.late-events"

    @property
    def alerts_topic(self) -> str:
        return f"{self.topic_prefix}.alerts"

    @property
    def bad_rows_topic(self) -> str:
        return f"{self.topic_prefix}.bad-rows"

    @property
    def accounting_topic(self) -> str:
        return f"{self.topic_prefix}.ingest-accounting"

    @property
    def ingest_group_id(self) -> str:
        return f"{self.topic_prefix}-ingest"

    @property
    def by_subject_topic(self) -> str:
        """The raw events repartitioned by subject (when the raw topic is not keyed so)."""
        return f"{self.topic_prefix}.raw-by-subject"

    @property
    def repartition_group_id(self) -> str:
        return f"{self.topic_prefix}-repartition"

    @property
    def counted_topic(self) -> str:
        """The topic ingest counts from: one whose partitions each hold whole subjects."""
        return self.raw_topic if self.raw_keyed_by_subject else self.by_subject_topic

    @property
    def state_journal_topic(self) -> str:
        """Ingest's per-subject state, a partition per partition of ``counted_topic``."""
        return f"{self.topic_prefix}.ingest-state"


@dataclasses.dataclass(frozen=True, slots=True)
class RedisSettings:
    """The Redis server of the view, the board's history and the unique visitor sketches."""

    #: redis://[user:password@]host:port/db, rediss://... for TLS, or unix:///path.
    redis_url: str = "redis://127.0.0.1:6379/0"
    #: PEM CA file for rediss:// (empty: the system's CAs), and a client certificate and key
    #: for servers that require one.
    redis_tls_ca_file: str = ""
    redis_tls_cert_file: str = ""
    redis_tls_key_file: str = ""


@dataclasses.dataclass(frozen=True, slots=True)
class WindowSettings:
    """Window sizes and their life cycle in event time."""

    #: Tumbling window sizes in seconds, comma-separated; each a divisor of a day.
    window_sizes: str = "60,3600,86400"
    #: Time zone day windows are aligned to (IANA name).
    day_time_zone: str = "UTC"
    #: A window closes (final result) once every raw partition's event time is past its end
    #: plus this much.
    grace_seconds: int = 60
    #: After closing, a window still takes late events (each emits a revision) until event time
    #: reaches its end + grace + this; later events are counted and published as late.
    window_retention_seconds: int = 3600
    #: A raw partition without messages for this long stops holding windows open: its
    #: watermark advances with the wall clock.
    idle_timeout_seconds: int = 30

    @property
    def windowing(self) -> Windowing:
        return Windowing(parse_sizes(self.window_sizes), ZoneInfo(self.day_time_zone))

    @property
    def policy(self) -> WindowPolicy:
        return WindowPolicy(self.windowing, self.grace_seconds, self.window_retention_seconds)


@dataclasses.dataclass(frozen=True, slots=True)
class IngestSettings:
    """How ingest reads, screens, counts and flushes raw events."""

    #: How often ingest publishes deltas and commits while it keeps up with the raw topic...
    flush_interval_seconds: float = 0.2
    #: ...and while it has a backlog (more than a batch of records waiting): longer flushes
    #: pre-aggregate more events per cell, and the KPI agent gets fewer, larger messages.
    backlog_flush_interval_seconds: float = 5.0
    ingest_max_records: int = 5000
    max_event_bytes: int = 65536
    #: Events older than this (by corrected event time, against the wall clock) are bad rows.
    max_event_age_seconds: int = 7 * 86400
    #: Events further in the future than this are bad rows.
    max_event_future_seconds: int = 600
    #: How long an event_id is remembered to drop client retries.
    dedup_horizon_seconds: int = 86400
    #: How long sessions, unique opens and unique clicks are remembered to count them once.
    unique_horizon_seconds: int = 30 * 86400
    #: Entries journaled after which the next flushes copy a partition's per-subject state to
    #: the journal, a slice each (at least as many as the last snapshot held): rebuilding a
    #: partition reads about twice the larger of this and its state at most.
    state_snapshot_entries: int = 50_000
    #: Inactivity (by event time) after which a subject's next event without a session_id
    #: starts a new session (GA4's session timeout).
    session_timeout_seconds: int = 1800
    blog_path_prefix: str = "/blog/"
    #: Your own site's domains (comma-separated): referrers from them are internal navigation.
    site_domains: str = ""
    #: A TOML file of channel rules replacing the built-in ones (streams/core/channel_rules.toml).
    channel_rules_file: str = ""
    #: HMAC key for pseudonymizing user and anonymous ids and email addresses (secret).
    pseudonymization_key: str = dataclasses.field(default="", repr=False)
    #: Allows a built-in, public pseudonymization key. Never in production.
    insecure_dev_mode: bool = False

    @property
    def site_domain_list(self) -> tuple[str, ...]:
        return tuple(d.strip().lower() for d in self.site_domains.split(",") if d.strip())


@dataclasses.dataclass(frozen=True, slots=True)
class AlertSettings:
    #: A YAML file of drop alert rules replacing the shipped ones (streams/core/alert_rules.yml);
    #: "none" turns in-stream alerts off.
    alert_rules_file: str = ""


@dataclasses.dataclass(frozen=True, slots=True)
class MetricSettings:
    #: Campaigns with their own Prometheus series (by recent volume); the rest count as "other".
    metrics_top_campaigns: int = 50
    #: A campaign without events for this long loses its Prometheus series.
    metrics_campaign_idle_seconds: int = 3600


@dataclasses.dataclass(frozen=True, slots=True)
class WebSettings:
    """The worker's HTTP surface: /metrics, /healthz, the board and its API."""

    web_host: str = "127.0.0.1"
    web_port: int = 6066
    #: Required by the board and the API (a bearer token, a cookie, or ?token= once) when the
    #: host is beyond loopback; /metrics and the probes stay open.
    web_token: str = dataclasses.field(default="", repr=False)

    @property
    def on_loopback(self) -> bool:
        if self.web_host == "localhost":
            return True
        try:
            return ipaddress.ip_address(self.web_host).is_loopback
        except ValueError:
            return False

    @property
    def url(self) -> str:
        return f"http://{self.web_host}:{self.web_port}"


@dataclasses.dataclass(frozen=True, slots=True)
class WorkerSettings:
    #: Names this worker's transactional producer; unique per worker, stable across restarts.
    worker_name: str = ""
    log_level: str = "info"
    #: After SIGTERM, the worker exits after this long even if its graceful stop has not ended.
    shutdown_timeout_seconds: int = 45
    #: What this worker process runs: ``all`` (ingest and the KPI agent), ``ingest`` (batch
    #: ingest only: run one per core beside an ``agent``) or ``agent`` (the KPI agent only).
    worker_role: str = "all"
    #: The worker's own files (the state stores on disk): a folder per topic prefix and worker.
    data_dir: str = dataclasses.field(default_factory=_default_data_dir)
    #: RocksDB's block cache for the ingest state of all the partitions this worker owns.
    store_block_cache_mb: int = 64
    #: RocksDB's write buffers (memtables) for that state, all partitions together.
    store_write_buffer_mb: int = 32
    #: The KPI table's block cache and write buffer, per delta partition this worker owns.
    table_block_cache_mb: int = 8
    table_write_buffer_mb: int = 4

    @property
    def resolved_worker_name(self) -> str:
        return self.worker_name or socket.gethostname()

    @property
    def runs_ingest(self) -> bool:
        return self.worker_role in ("all", "ingest")

    @property
    def runs_agent(self) -> bool:
        return self.worker_role in ("all", "agent")


Section = (
    KafkaSettings
    | TopicSettings
    | RedisSettings
    | WindowSettings
    | IngestSettings
    | AlertSettings
    | MetricSettings
    | WebSettings
    | WorkerSettings
)


@dataclasses.dataclass(frozen=True, slots=True)
class Settings:
    """Everything a worker and the commands beside it need, in sections."""

    kafka: KafkaSettings = dataclasses.field(default_factory=KafkaSettings)
    topics: TopicSettings = dataclasses.field(default_factory=TopicSettings)
    redis: RedisSettings = dataclasses.field(default_factory=RedisSettings)
    windows: WindowSettings = dataclasses.field(default_factory=WindowSettings)
    ingest: IngestSettings = dataclasses.field(default_factory=IngestSettings)
    alerts: AlertSettings = dataclasses.field(default_factory=AlertSettings)
    metrics: MetricSettings = dataclasses.field(default_factory=MetricSettings)
    web: WebSettings = dataclasses.field(default_factory=WebSettings)
    worker: WorkerSettings = dataclasses.field(default_factory=WorkerSettings)

    SECRET_FIELDS: ClassVar[frozenset[str]] = frozenset(
        {"pseudonymization_key", "kafka_sasl_password", "web_token"}
    )

    @property
    def ingest_policy(self) -> IngestPolicy:
        ingest = self.ingest
        return IngestPolicy(
            windows=self.windows.policy,
            idle_timeout_seconds=self.windows.idle_timeout_seconds,
            max_event_bytes=ingest.max_event_bytes,
            max_event_age_seconds=ingest.max_event_age_seconds,
            max_event_future_seconds=ingest.max_event_future_seconds,
            dedup_horizon_seconds=ingest.dedup_horizon_seconds,
            blog_path_prefix=ingest.blog_path_prefix,
            own_sites=ingest.site_domain_list,
            session_timeout_seconds=ingest.session_timeout_seconds,
            session_ttl_seconds=ingest.unique_horizon_seconds,
            repartitioned=not self.topics.raw_keyed_by_subject,
        )

    @property
    def worker_dir(self) -> Path:
        """This worker's own folder: under the data directory, per topic prefix and worker name
        (workers sharing a machine and a data directory each keep their own stores)."""
        return Path(self.worker.data_dir).expanduser() / self.topics.app_id / self.worker.resolved_worker_name

    def value(self, name: str) -> Any:
        """A setting by its flat name (``kafka_bootstrap``)."""
        section, field = _FLAT[name]
        return getattr(getattr(self, section), field)

    def flat(self) -> Iterator[tuple[str, Any]]:
        """(flat name, value) of every setting, section by section."""
        for name in _FLAT:
            yield name, self.value(name)

    def replace(self, **values: Any) -> Settings:
        """A copy with some settings changed, by flat name (``replace(grace_seconds=0)``)."""
        unknown = sorted(set(values) - set(_FLAT))
        if unknown:
            raise TypeError(f"not a setting: {', '.join(unknown)}")
        by_section: dict[str, dict[str, Any]] = {}
        for name, value in values.items():
            section, field = _FLAT[name]
            by_section.setdefault(section, {})[field] = value
        changed = {
            section: dataclasses.replace(getattr(self, section), **fields)
            for section, fields in by_section.items()
        }
        return dataclasses.replace(self, **changed)

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> Settings:
        """Build settings from ``environ`` (default ``os.environ``) and the optional file."""
        env = os.environ if environ is None else environ
        raw: dict[str, Any] = {}
        problems: list[str] = []
        config_file = env.get(CONFIG_FILE_VARIABLE)
        if config_file:
            raw.update(_read_config_file(Path(config_file), problems))
        for name in _FLAT:
            variable = ENV_PREFIX + name.upper()
            if variable in env:
                raw[name] = env[variable]
        unknown = sorted(
            name
            for name in env
            if name.startswith(ENV_PREFIX)
            and name != CONFIG_FILE_VARIABLE
            and not name.startswith(STACK_ENV_PREFIX)
            and name[len(ENV_PREFIX) :].lower() not in _FLAT
        )
        for name in unknown:
            problems.append(f"{name} is not a known setting{_did_you_mean(name, ENV_PREFIX)}")
        values: dict[str, Any] = {}
        for name, value in raw.items():
            try:
                values[name] = parse_value(value, _FIELD_TYPES[name])
            except ValueError as exc:
                problems.append(f"{ENV_PREFIX}{name.upper()}: {exc}")
        if problems:
            raise ConfigError(format_problems(problems))
        settings = cls().replace(**values)
        settings.validate()
        return settings

    def redacted(self) -> dict[str, str]:
        """Every setting as text (booleans as true or false), secrets masked (and a password in
        the Redis URL): safe to print or log."""
        shown = {
            name: "***" if name in self.SECRET_FIELDS and value else _text(value)
            for name, value in self.flat()
        }
        shown["redis_url"] = without_password(self.redis.redis_url)
        return shown

    def validate_for_worker(self) -> None:
        """What only a worker needs: a pseudonymization key and, serving beyond loopback, a web
        token; or an explicit dev mode."""
        problems: list[str] = []
        if not self.ingest.pseudonymization_key and not self.ingest.insecure_dev_mode:
            problems.append(
                "MKPI_PSEUDONYMIZATION_KEY is not set: set it to a long random secret (for example "
                "`openssl rand -hex 32`), or set MKPI_INSECURE_DEV_MODE=true on a development machine"
            )
        elif self.ingest.pseudonymization_key and len(self.ingest.pseudonymization_key) < 16:
            problems.append(
                "MKPI_PSEUDONYMIZATION_KEY: too short; use at least 16 characters (32 random bytes is best)"
            )
        web = self.web
        if not web.on_loopback and not web.web_token and not self.ingest.insecure_dev_mode:
            problems.append(
                f"MKPI_WEB_HOST={web.web_host!r} serves the board and the KPI API beyond this machine: set "
                "MKPI_WEB_TOKEN to a long random secret (for example `openssl rand -hex 32`), or bind "
                "MKPI_WEB_HOST to 127.0.0.1"
            )
        elif web.web_token and len(web.web_token) < 16:
            problems.append("MKPI_WEB_TOKEN: too short; use at least 16 characters (32 random bytes is best)")
        if problems:
            raise ConfigError(format_problems(problems))

    def as_environment(self) -> dict[str, str]:
        """The ``MKPI_*`` variables that reproduce these settings (for child processes)."""
        return {ENV_PREFIX + name.upper(): str(value) for name, value in self.flat()}

    def _validate_kafka_security(self, bad: Callable[[str, str], None]) -> None:
        protocol = self.kafka.kafka_security_protocol
        if protocol not in KAFKA_SECURITY_PROTOCOLS:
            bad("kafka_security_protocol", f"one of {', '.join(KAFKA_SECURITY_PROTOCOLS)}")
        if protocol.startswith("SASL_"):
            if self.kafka.kafka_sasl_mechanism not in KAFKA_SASL_MECHANISMS:
                bad("kafka_sasl_mechanism", f"one of {', '.join(KAFKA_SASL_MECHANISMS)}")
            # Only empty values are shown: bad() prints the value, and a password must not be.
            for name in ("kafka_sasl_username", "kafka_sasl_password"):
                if not self.value(name):
                    bad(name, f"MKPI_KAFKA_SECURITY_PROTOCOL={protocol} needs it")
        elif self.kafka.kafka_sasl_username or self.kafka.kafka_sasl_password:
            bad(
                "kafka_security_protocol",
                "a SASL user is set but the protocol does not use SASL: use SASL_SSL (or SASL_PLAINTEXT)",
            )
        tls = ("kafka_tls_ca_file", "kafka_tls_cert_file", "kafka_tls_key_file")
        if not protocol.endswith("SSL") and any(self.value(name) for name in tls):
            bad(
                "kafka_security_protocol",
                "TLS files are set but the protocol does not use TLS: use SSL or SASL_SSL",
            )
        _check_files(self, tls, bad)
        if bool(self.kafka.kafka_tls_cert_file) != bool(self.kafka.kafka_tls_key_file):
            bad(
                "kafka_tls_cert_file",
                "set both MKPI_KAFKA_TLS_CERT_FILE and MKPI_KAFKA_TLS_KEY_FILE, or neither",
            )

    def validate(self) -> None:
        """Raise ConfigError listing every invalid value."""
        problems: list[str] = []

        def bad(name: str, why: str) -> None:
            value = self.value(name)
            if name in self.SECRET_FIELDS and value:
                value = "***"
            elif isinstance(value, str):
                value = without_password(value)
            problems.append(f"{ENV_PREFIX}{name.upper()}={value!r}: {why}")

        for address in self.kafka.kafka_bootstrap.split(","):
            try:
                _split_host_port(address)
            except ValueError as exc:
                bad("kafka_bootstrap", str(exc))
        self._validate_kafka_security(bad)
        parsed = urlparse(self.redis.redis_url)
        if not _redis_url_is_valid(self.redis.redis_url):
            bad("redis_url", "expected redis://host:port/db, rediss://... or unix:///path")
        redis_tls = ("redis_tls_ca_file", "redis_tls_cert_file", "redis_tls_key_file")
        for name in redis_tls:
            if self.value(name) and parsed.scheme != "rediss":
                bad(name, "only used with TLS: make MKPI_REDIS_URL a rediss:// URL, or unset this")
        _check_files(self, redis_tls, bad)
        if bool(self.redis.redis_tls_cert_file) != bool(self.redis.redis_tls_key_file):
            bad(
                "redis_tls_cert_file",
                "set both MKPI_REDIS_TLS_CERT_FILE and MKPI_REDIS_TLS_KEY_FILE, or neither",
            )
        for name in ("raw_topic", "topic_prefix"):
            value = self.value(name)
            if not value or not all(c.isalnum() or c in "._-" for c in value) or len(value) > 200:
                bad(name, "a Kafka topic name: letters, digits, '.', '_' and '-' only")
        if not 1 <= self.topics.partitions <= 1000:
            bad("partitions", "must be between 1 and 1000")
        if not 1 <= self.topics.replication_factor <= 10:
            bad("replication_factor", "must be between 1 and 10 (and at most the number of brokers)")
        try:
            parse_sizes(self.windows.window_sizes)
        except ValueError as exc:
            bad("window_sizes", str(exc))
        try:
            ZoneInfo(self.windows.day_time_zone)
        except (ZoneInfoNotFoundError, ValueError):
            bad("day_time_zone", "an IANA time zone name such as UTC, Europe/Berlin or Asia/Tehran")
        if not self.ingest.blog_path_prefix.startswith("/"):
            bad("blog_path_prefix", "must start with '/'")
        if not 0.01 <= self.ingest.flush_interval_seconds <= 60:
            bad("flush_interval_seconds", "must be between 0.01 and 60 seconds")
        if not self.ingest.flush_interval_seconds <= self.ingest.backlog_flush_interval_seconds <= 60:
            bad(
                "backlog_flush_interval_seconds",
                "must be between MKPI_FLUSH_INTERVAL_SECONDS and 60 seconds",
            )
        for name in (
            "store_block_cache_mb",
            "store_write_buffer_mb",
            "table_block_cache_mb",
            "table_write_buffer_mb",
        ):
            if not 1 <= self.value(name) <= 65536:
                bad(name, "must be between 1 and 65536 (MB)")
        if not 1 <= self.worker.shutdown_timeout_seconds <= 3600:
            bad("shutdown_timeout_seconds", "must be between 1 and 3600 seconds")
        if not 1 <= self.ingest.ingest_max_records <= 1_000_000:
            bad("ingest_max_records", "must be between 1 and 1,000,000")
        if not 64 <= self.ingest.max_event_bytes <= 10_000_000:
            bad("max_event_bytes", "must be between 64 and 10,000,000")
        if not 1 <= self.web.web_port <= 65535:
            bad("web_port", "must be a TCP port (1-65535)")
        if not 1 <= self.metrics.metrics_top_campaigns <= 10_000:
            bad("metrics_top_campaigns", "must be between 1 and 10,000")
        if self.metrics.metrics_campaign_idle_seconds <= 0:
            bad("metrics_campaign_idle_seconds", "must be a positive number of seconds")
        if not 6 <= self.kafka.kafka_session_timeout_seconds <= 300:
            bad("kafka_session_timeout_seconds", "must be between 6 and 300 seconds (the broker's limits)")
        if self.windows.grace_seconds < 0:
            bad("grace_seconds", "must be 0 or more seconds")
        if self.windows.window_retention_seconds < 0:
            bad("window_retention_seconds", "must be 0 or more seconds")
        for name in (
            "idle_timeout_seconds",
            "max_event_age_seconds",
            "max_event_future_seconds",
            "dedup_horizon_seconds",
            "unique_horizon_seconds",
            "session_timeout_seconds",
        ):
            if self.value(name) <= 0:
                bad(name, "must be a positive number of seconds")
        if self.ingest.state_snapshot_entries < 1:
            bad("state_snapshot_entries", "must be a positive number of entries")
        if self.ingest.channel_rules_file and not Path(self.ingest.channel_rules_file).is_file():
            bad("channel_rules_file", "no such file")
        if (
            self.alerts.alert_rules_file not in ("", "none")
            and not Path(self.alerts.alert_rules_file).is_file()
        ):
            bad("alert_rules_file", "no such file (or 'none' to turn drop alerts off)")
        if self.worker.log_level.lower() not in ("debug", "info", "warning", "error"):
            bad("log_level", "one of debug, info, warning, error")
        if self.worker.worker_role not in WORKER_ROLES:
            bad("worker_role", f"one of {', '.join(WORKER_ROLES)}")
        if not self.worker.data_dir:
            bad("data_dir", "a folder for the worker's files")
        if problems:
            raise ConfigError(format_problems(problems))


KAFKA_SECURITY_PROTOCOLS = ("PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL")
KAFKA_SASL_MECHANISMS = ("SCRAM-SHA-512", "SCRAM-SHA-256", "PLAIN")


#: What an empty value means, where it is not simply "none".
EMPTY_MEANS: dict[str, str] = {
    "kafka_tls_ca_file": "the system's CAs",
    "redis_tls_ca_file": "the system's CAs",
    "channel_rules_file": "the built-in rules, streams/core/channel_rules.toml",
    "alert_rules_file": "the shipped rules, streams/core/alert_rules.yml",
    "worker_name": "this host's name",
    "pseudonymization_key": "none: a worker refuses to start unless MKPI_INSECURE_DEV_MODE=true",
    "web_token": "none: the board and the API answer without one (on loopback only)",
}


def setting_origins(environ: Mapping[str, str] | None = None) -> dict[str, str]:
    """Where each setting's value comes from: ``environment``, the config file, or ``default``."""
    env = os.environ if environ is None else environ
    config_file = env.get(CONFIG_FILE_VARIABLE)
    in_file: set[str] = set()
    if config_file:
        in_file = set(_read_config_file(Path(config_file), []))
    return {
        name: "environment"
        if ENV_PREFIX + name.upper() in env
        else (f"file {config_file}" if name in in_file else "default")
        for name in _FLAT
    }


def _text(value: Any) -> str:
    return ("true" if value else "false") if isinstance(value, bool) else str(value)


def _check_files(settings: Settings, names: tuple[str, ...], bad: Callable[[str, str], None]) -> None:
    for name in names:
        path = settings.value(name)
        if path and not Path(path).is_file():
            bad(name, "no such file")


def _flat_names() -> dict[str, tuple[str, str]]:
    """Setting name -> (section, field), section by section in declaration order."""
    names = {}
    for section in dataclasses.fields(Settings):
        kind: Any = section.default_factory  # every section has one
        for field in dataclasses.fields(kind):
            names[field.name] = (section.name, field.name)
    return names


def field_type(field: dataclasses.Field[Any]) -> type:
    """The type of a settings field (declared as a name under ``from __future__ import annotations``)."""
    return {"str": str, "int": int, "float": float, "bool": bool}[str(field.type)]


_FLAT = _flat_names()
_FIELD_TYPES: dict[str, type] = {
    name: field_type(next(f for f in dataclasses.fields(getattr(Settings(), section)) if f.name == field))
    for name, (section, field) in _FLAT.items()
}


WORKER_ROLES = ("all", "ingest", "agent")
_TRUE = ("1", "true", "yes", "on")
_FALSE = ("0", "false", "no", "off", "")


def parse_value(value: Any, kind: type) -> Any:
    """``value`` (a variable's text, or a TOML value) as a setting of type ``kind``; ValueError
    saying what was expected."""
    if kind is bool:
        if isinstance(value, bool):
            return value
        text = str(value).strip().lower()
        if text in _TRUE or text in _FALSE:
            return text in _TRUE
        raise ValueError(f"expected true or false, got {value!r}")
    if kind is str:
        if not isinstance(value, str):
            raise ValueError(f"expected text, got {value!r}")
        return value
    if isinstance(value, bool):
        raise ValueError(f"expected a number, got {value!r}")
    try:
        return kind(value)
    except (TypeError, ValueError):
        raise ValueError(f"expected {'an integer' if kind is int else 'a number'}, got {value!r}") from None


def _redis_url_is_valid(url: str) -> bool:
    parsed = urlparse(url)
    if parsed.scheme == "unix":
        return bool(parsed.path)
    if parsed.scheme not in ("redis", "rediss") or not url.startswith(f"{parsed.scheme}://"):
        return False
    try:
        parsed.port  # noqa: B018 - raises on a port that is not a number
    except ValueError:
        return False
    return bool(parsed.hostname)


def _split_host_port(address: str) -> tuple[str, int]:
    host, sep, port = address.strip().rpartition(":")
    if not sep or not host or not port.isdigit() or not 1 <= int(port) <= 65535:
        raise ValueError(f"{address!r} is not host:port")
    return host, int(port)


def _read_config_file(path: Path, problems: list[str]) -> dict[str, Any]:
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        problems.append(f"{CONFIG_FILE_VARIABLE}={str(path)!r}: no such file")
        return {}
    except (OSError, tomllib.TOMLDecodeError) as exc:
        problems.append(f"{CONFIG_FILE_VARIABLE}={str(path)!r}: cannot read it: {exc}")
        return {}
    for key in sorted(set(data) - set(_FLAT)):
        problems.append(f"{path}: {key!r} is not a known setting{_did_you_mean(key, '')}")
    return {k: v for k, v in data.items() if k in _FLAT}


def did_you_mean(name: str, known: Iterable[str]) -> str:
    """ " (did you mean X?)" for the known name nearest ``name``, or " (typo?)" when none is near."""
    near = difflib.get_close_matches(name, list(known), n=1, cutoff=0.75)
    return f" (did you mean {near[0]}?)" if near else " (typo?)"


def _did_you_mean(name: str, prefix: str) -> str:
    """The nearest setting, spelled as ``name`` is (a variable, or a config file key)."""
    return did_you_mean(name, [prefix + flat.upper() if prefix else flat for flat in _FLAT])


def format_problems(problems: list[str]) -> str:
    return "invalid configuration:\n" + "\n".join(f"  - {p}" for p in problems)
