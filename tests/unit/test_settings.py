from pathlib import Path

import pytest

from streams.settings import ConfigError, Settings


def test_defaults_are_valid_and_bind_to_loopback() -> None:
    settings = Settings.from_env({})
    assert settings.web_host == "127.0.0.1"
    assert settings.kafka_port == 9092
    assert settings.deltas_topic == "mkpi.kpi-deltas"


def test_environment_overrides_and_converts_types() -> None:
    settings = Settings.from_env(
        {"MKPI_PARTITIONS": "6", "MKPI_FLUSH_INTERVAL_SECONDS": "0.25", "MKPI_TOPIC_PREFIX": "acme"}
    )
    assert (settings.partitions, settings.flush_interval_seconds, settings.app_id) == (6, 0.25, "acme")


def test_every_problem_is_reported_with_the_variable_to_fix() -> None:
    with pytest.raises(ConfigError) as caught:
        Settings.from_env(
            {
                "MKPI_PARTITIONS": "many",
                "MKPI_WINDOW_SECONDS": "7",
                "MKPI_KAFKA_BOOTSTRAP": "nohost",
                "MKPI_PARTITONS": "3",
            }
        )
    message = str(caught.value)
    assert "MKPI_PARTITIONS: expected an integer, got 'many'" in message
    assert "MKPI_PARTITONS is not a known setting" in message


def test_value_errors_name_the_variable() -> None:
    with pytest.raises(ConfigError) as caught:
        Settings.from_env(
            {"MKPI_WINDOW_SECONDS": "7", "MKPI_KAFKA_BOOTSTRAP": "nohost", "MKPI_REDIS_URL": "http://x"}
        )
    message = str(caught.value)
    for variable in ("MKPI_WINDOW_SECONDS", "MKPI_KAFKA_BOOTSTRAP", "MKPI_REDIS_URL"):
        assert variable in message


def test_file_settings_apply_and_environment_wins(tmp_path: Path) -> None:
    config = tmp_path / "mkpi.toml"
    config.write_text('partitions = 12\ntopic_prefix = "fromfile"\n')
    settings = Settings.from_env({"MKPI_CONFIG_FILE": str(config), "MKPI_TOPIC_PREFIX": "fromenv"})
    assert (settings.partitions, settings.topic_prefix) == (12, "fromenv")


def test_file_problems_are_reported(tmp_path: Path) -> None:
    config = tmp_path / "mkpi.toml"
    config.write_text("partitions = 'x'\nunknown_thing = 1\n")
    with pytest.raises(ConfigError) as caught:
        Settings.from_env({"MKPI_CONFIG_FILE": str(config)})
    assert "'unknown_thing' is not a known setting" in str(caught.value)
    assert "MKPI_PARTITIONS" in str(caught.value)
    with pytest.raises(ConfigError, match="no such file"):
        Settings.from_env({"MKPI_CONFIG_FILE": str(tmp_path / "missing.toml")})


def test_as_environment_round_trips() -> None:
    settings = Settings.from_env({"MKPI_PARTITIONS": "4", "MKPI_WORKER_NAME": "w7"})
    assert Settings.from_env(settings.as_environment()) == settings
