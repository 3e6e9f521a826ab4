"""The local stack's settings: MKPI_STACK_* variables, read and checked apart from a worker's."""

from __future__ import annotations

import pytest

from agents.settings import ConfigError
from devtools.stack.settings import StackSettings


def test_defaults_and_variables() -> None:
    assert StackSettings.from_env({}).stack_kafka_version == "3.9.1"
    stack = StackSettings.from_env(
        {"MKPI_STACK_KAFKA_HEAP": "1g", "MKPI_STACK_WITH_CHROMIUM": "0", "MKPI_GRACE_SECONDS": "5"}
    )
    assert (stack.stack_kafka_heap, stack.stack_with_chromium) == ("1g", False)


@pytest.mark.parametrize(
    ("variable", "value", "message"),
    [
        (
            "MKPI_STACK_KAFKA_VERSON",
            "4.0.0",
            "MKPI_STACK_KAFKA_VERSON is not a setting of the local stack \\(did you mean MKPI_STACK_KAFKA_VERSION\\?\\)",
        ),
        ("MKPI_STACK_KAFKA_VERSION", "4.0", "an Apache Kafka release"),
        ("MKPI_STACK_KAFKA_HEAP", "lots", "a JVM heap size"),
        ("MKPI_STACK_KAFKA_SSL_PORT", "70000", "or 0 for none"),
        ("MKPI_STACK_WITH_PROMTOOL", "maybe", "expected true or false"),
    ],
)
def test_a_bad_value_names_its_variable(variable: str, value: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        StackSettings.from_env({variable: value})
