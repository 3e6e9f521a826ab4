from pathlib import Path

import pytest

from streams.settings import ConfigError, Settings, without_password

DEV = {"MKPI_INSECURE_DEV_MODE": "true"}


def test_defaults_are_valid_and_bind_to_loopback() -> None:
    settings = Settings.from_env(DEV)
    assert settings.web_host == "127.0.0.1"
    assert settings.kafka_port == 9092
    assert settings.deltas_topic == "mkpi.kpi-deltas"


def test_environment_overrides_and_converts_types() -> None:
    settings = Settings.from_env(
        {**DEV, "MKPI_PARTITIONS": "6", "MKPI_FLUSH_INTERVAL_SECONDS": "0.25", "MKPI_TOPIC_PREFIX": "acme"}
    )
    assert (settings.partitions, settings.flush_interval_seconds, settings.app_id) == (6, 0.25, "acme")


def test_every_problem_is_reported_with_the_variable_to_fix() -> None:
    with pytest.raises(ConfigError) as caught:
        Settings.from_env(
            {
                "MKPI_PARTITIONS": "many",
                "MKPI_WINDOW_SIZES": "7",
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
            {"MKPI_WINDOW_SIZES": "7", "MKPI_KAFKA_BOOTSTRAP": "nohost", "MKPI_REDIS_URL": "http://x"}
        )
    message = str(caught.value)
    for variable in ("MKPI_WINDOW_SIZES", "MKPI_KAFKA_BOOTSTRAP", "MKPI_REDIS_URL"):
        assert variable in message


def test_the_backlog_flush_interval_cannot_be_shorter_than_the_usual_one() -> None:
    with pytest.raises(ConfigError) as caught:
        Settings.from_env(
            {**DEV, "MKPI_FLUSH_INTERVAL_SECONDS": "2", "MKPI_BACKLOG_FLUSH_INTERVAL_SECONDS": "1"}
        )
    assert "MKPI_BACKLOG_FLUSH_INTERVAL_SECONDS" in str(caught.value)


def test_file_settings_apply_and_environment_wins(tmp_path: Path) -> None:
    config = tmp_path / "mkpi.toml"
    config.write_text('partitions = 12\ntopic_prefix = "fromfile"\n')
    settings = Settings.from_env({**DEV, "MKPI_CONFIG_FILE": str(config), "MKPI_TOPIC_PREFIX": "fromenv"})
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
    settings = Settings.from_env({**DEV, "MKPI_PARTITIONS": "4", "MKPI_WORKER_NAME": "w7"})
    assert Settings.from_env(settings.as_environment()) == settings


def test_a_missing_pseudonymization_key_is_refused_outside_dev_mode() -> None:
    with pytest.raises(ConfigError, match="MKPI_PSEUDONYMIZATION_KEY is not set"):
        Settings.from_env({}).validate_for_worker()
    with pytest.raises(ConfigError, match="too short"):
        Settings.from_env({"MKPI_PSEUDONYMIZATION_KEY": "short"}).validate_for_worker()
    Settings.from_env({"MKPI_PSEUDONYMIZATION_KEY": "k" * 32}).validate_for_worker()
    Settings.from_env(DEV).validate_for_worker()


def test_booleans_accept_the_usual_spellings() -> None:
    for text, value in (("true", True), ("YES", True), ("1", True), ("off", False), ("0", False)):
        settings = Settings.from_env(
            {**DEV, "MKPI_INSECURE_DEV_MODE": text, "MKPI_PSEUDONYMIZATION_KEY": "k" * 20}
        )
        assert settings.insecure_dev_mode is value
    with pytest.raises(ConfigError, match="expected true or false"):
        Settings.from_env({"MKPI_INSECURE_DEV_MODE": "maybe"})


def test_redacted_masks_the_secret() -> None:
    settings = Settings.from_env({"MKPI_PSEUDONYMIZATION_KEY": "super-secret-value-123"})
    shown = settings.redacted()
    assert shown["pseudonymization_key"] == "***"
    assert "super-secret-value-123" not in repr(shown)


def test_day_time_zone_must_be_a_real_zone() -> None:
    assert (
        Settings.from_env({**DEV, "MKPI_DAY_TIME_ZONE": "Asia/Tehran"}).windowing.day_zone.key
        == "Asia/Tehran"
    )
    with pytest.raises(ConfigError, match="MKPI_DAY_TIME_ZONE"):
        Settings.from_env({**DEV, "MKPI_DAY_TIME_ZONE": "Mars/Olympus"})


def test_secrets_stay_out_of_repr_and_of_the_redis_url_shown() -> None:
    settings = Settings.from_env(
        {
            "MKPI_PSEUDONYMIZATION_KEY": "super-secret-value-123",
            "MKPI_REDIS_URL": "rediss://mkpi:p4ss-w0rd@redis.internal:6380/0",
        }
    )
    assert "super-secret-value-123" not in repr(settings)
    shown = settings.redacted()
    assert shown["redis_url"] == "rediss://mkpi:***@redis.internal:6380/0"
    assert "p4ss-w0rd" not in repr(shown)
    assert without_password("redis://:only-a-password@10.0.0.5:6379/0") == "redis://:***@10.0.0.5:6379/0"
    assert without_password("redis://127.0.0.1:6379/0") == "redis://127.0.0.1:6379/0"
