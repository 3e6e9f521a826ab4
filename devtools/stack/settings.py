"""Settings of the local development stack (``mkpi stack``, ``mkpi run``, scripts/bootstrap.sh):
where its broker and Redis live on this machine, and what bootstrap installs.

They are not a worker's settings: they come from ``MKPI_STACK_*`` variables, which the worker's
loader (``agents.settings``) leaves to this one, and follow its naming rule (a field is named as
its variable: ``stack_kafka_heap`` is ``MKPI_STACK_KAFKA_HEAP``).
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from agents.settings import (
    ENV_PREFIX,
    STACK_ENV_PREFIX,
    ConfigError,
    did_you_mean,
    field_type,
    format_problems,
    parse_value,
)


def _default_stack_dir() -> str:
    return str(Path.home() / ".cache" / "mkpi")


@dataclasses.dataclass(frozen=True, slots=True)
class StackSettings:
    #: Kafka's jars and data, Redis's data, the logs of `mkpi run`.
    stack_dir: str = dataclasses.field(default_factory=_default_stack_dir)
    #: The Apache Kafka release the local broker runs (3.x or 4.x).
    stack_kafka_version: str = "3.9.1"
    stack_kafka_controller_port: int = 9093
    #: The local broker's SASL_SSL (SCRAM) and SSL (client certificate) listeners, for trying
    #: security settings against it; 0 leaves one out.
    stack_kafka_sasl_ssl_port: int = 9094
    stack_kafka_ssl_port: int = 9095
    stack_kafka_heap: str = "512m"
    #: Whether scripts/bootstrap.sh installs Debian's Chromium (the live board's browser test)...
    stack_with_chromium: bool = True
    #: ...and extracts promtool from Debian's prometheus package (the alerting-rule tests).
    stack_with_promtool: bool = True

    @property
    def home(self) -> Path:
        return Path(self.stack_dir).expanduser()

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> StackSettings:
        """The ``MKPI_STACK_*`` variables of ``environ`` (default ``os.environ``); ConfigError
        naming each unknown or invalid one."""
        env = os.environ if environ is None else environ
        fields = {field.name: field for field in dataclasses.fields(cls)}
        values: dict[str, Any] = {}
        problems: list[str] = []
        for variable, text in env.items():
            if not variable.startswith(STACK_ENV_PREFIX):
                continue
            name = variable[len(ENV_PREFIX) :].lower()
            if name not in fields:
                known = [ENV_PREFIX + field.upper() for field in fields]
                problems.append(
                    f"{variable} is not a setting of the local stack{did_you_mean(variable, known)}"
                )
                continue
            try:
                values[name] = parse_value(text, field_type(fields[name]))
            except ValueError as exc:
                problems.append(f"{variable}: {exc}")
        if problems:
            raise ConfigError(format_problems(problems))
        settings = cls(**values)
        settings.validate()
        return settings

    def validate(self) -> None:
        problems: list[str] = []

        def bad(name: str, why: str) -> None:
            problems.append(f"{ENV_PREFIX}{name.upper()}={getattr(self, name)!r}: {why}")

        parts = self.stack_kafka_version.split(".")
        if len(parts) != 3 or not all(p.isdigit() for p in parts) or int(parts[0]) not in (3, 4):
            bad("stack_kafka_version", "an Apache Kafka release such as 3.9.1 or 4.0.0")
        heap = self.stack_kafka_heap
        if not heap[:-1].isdigit() or heap[-1].lower() not in "mg":
            bad("stack_kafka_heap", "a JVM heap size such as 512m or 1g")
        if not 1 <= self.stack_kafka_controller_port <= 65535:
            bad("stack_kafka_controller_port", "must be a TCP port (1-65535)")
        for name in ("stack_kafka_sasl_ssl_port", "stack_kafka_ssl_port"):
            if not 0 <= getattr(self, name) <= 65535:
                bad(name, "must be a TCP port (1-65535), or 0 for none")
        if not self.stack_dir:
            bad("stack_dir", "a folder for the local stack's files")
        if problems:
            raise ConfigError(format_problems(problems))
