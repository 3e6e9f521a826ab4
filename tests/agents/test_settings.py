import dataclasses
from pathlib import Path

import pytest

from agents.settings import ConfigError, Settings, without_password

DEV = {"MKPI_INSECURE_DEV_MODE": "true"}


def test_defaults_are_valid_and_bind_to_loopback() -> None:
    settings = Settings.from_env(DEV)
    assert settings.web.web_host == "127.0.0.1"
    assert settings.kafka.port == 9092
    assert settings.topics.deltas_topic == "mkpi.kpi-deltas"


def test_environment_overrides_and_converts_types() -> None:
    settings = Settings.from_env(
        {**DEV, "MKPI_PARTITIONS": "6", "MKPI_FLUSH_INTERVAL_SECONDS": "0.25", "MKPI_TOPIC_PREFIX": "acme"}
    )
    assert (settings.topics.partitions, settings.ingest.flush_interval_seconds, settings.topics.app_id) == (
        6,
        0.25,
        "acme",
    )


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
    assert "MKPI_PARTITONS is not a known setting (did you mean MKPI_PARTITIONS?)" in message


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
    assert (settings.topics.partitions, settings.topics.topic_prefix) == (12, "fromenv")


def test_file_problems_are_reported(tmp_path: Path) -> None:
    config = tmp_path / "mkpi.toml"
    config.write_text("partitions = 'x'\nunknown_thing = 1\ngrace_second = 5\n")
    with pytest.raises(ConfigError) as caught:
        Settings.from_env({"MKPI_CONFIG_FILE": str(config)})
    assert "'unknown_thing' is not a known setting (typo?)" in str(caught.value)
    assert "'grace_second' is not a known setting (did you mean grace_seconds?)" in str(caught.value)
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
        assert settings.ingest.insecure_dev_mode is value
    with pytest.raises(ConfigError, match="expected true or false"):
        Settings.from_env({"MKPI_INSECURE_DEV_MODE": "maybe"})


def test_redacted_masks_the_secret() -> None:
    settings = Settings.from_env({"MKPI_PSEUDONYMIZATION_KEY": "super-secret-value-123"})
    shown = settings.redacted()
    assert shown["pseudonymization_key"] == "***"
    assert "super-secret-value-123" not in repr(shown)


def test_day_time_zone_must_be_a_real_zone() -> None:
    assert (
        Settings.from_env({**DEV, "MKPI_DAY_TIME_ZONE": "Asia/Tehran"}).windows.windowing.day_zone.key
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


def test_kafka_security_settings_are_checked_together(tmp_path: Path) -> None:
    ca = tmp_path / "ca.pem"
    ca.write_text("not read by validation")
    with pytest.raises(ConfigError) as caught:
        Settings.from_env(
            {
                **DEV,
                "MKPI_KAFKA_SECURITY_PROTOCOL": "SASL_SSL",
                "MKPI_KAFKA_SASL_MECHANISM": "SCRAM-SHA-1",
                "MKPI_KAFKA_TLS_CERT_FILE": str(ca),
            }
        )
    message = str(caught.value)
    assert "MKPI_KAFKA_SASL_MECHANISM='SCRAM-SHA-1': one of SCRAM-SHA-512, SCRAM-SHA-256, PLAIN" in message
    assert "MKPI_KAFKA_SASL_USERNAME=''" in message and "MKPI_KAFKA_SASL_PASSWORD=''" in message
    assert "MKPI_KAFKA_TLS_CERT_FILE" in message and "MKPI_KAFKA_TLS_KEY_FILE" in message

    with pytest.raises(ConfigError) as caught:
        Settings.from_env(
            {
                **DEV,
                "MKPI_KAFKA_SASL_USERNAME": "mkpi",
                "MKPI_KAFKA_SASL_PASSWORD": "hunter2-secret",
                "MKPI_KAFKA_TLS_CA_FILE": str(tmp_path / "missing.pem"),
            }
        )
    message = str(caught.value)
    assert "does not use SASL" in message and "does not use TLS" in message
    assert "MKPI_KAFKA_TLS_CA_FILE" in message and "no such file" in message
    assert "hunter2-secret" not in message

    settings = Settings.from_env(
        {
            **DEV,
            "MKPI_KAFKA_SECURITY_PROTOCOL": "SASL_SSL",
            "MKPI_KAFKA_SASL_USERNAME": "mkpi",
            "MKPI_KAFKA_SASL_PASSWORD": "hunter2-secret",
            "MKPI_KAFKA_TLS_CA_FILE": str(ca),
        }
    )
    assert settings.redacted()["kafka_sasl_password"] == "***"
    assert "hunter2-secret" not in repr(settings)


def test_redis_tls_files_need_a_rediss_url(tmp_path: Path) -> None:
    ca = tmp_path / "ca.pem"
    ca.write_text("")
    with pytest.raises(ConfigError) as caught:
        Settings.from_env({**DEV, "MKPI_REDIS_TLS_CA_FILE": str(ca)})
    assert "MKPI_REDIS_TLS_CA_FILE" in str(caught.value) and "rediss://" in str(caught.value)
    settings = Settings.from_env(
        {
            **DEV,
            "MKPI_REDIS_URL": "rediss://worker:pw@redis.example:6380/0",
            "MKPI_REDIS_TLS_CA_FILE": str(ca),
        }
    )
    assert settings.redacted()["redis_url"] == "rediss://worker:***@redis.example:6380/0"


def test_each_setting_has_one_section_and_one_variable() -> None:
    settings = Settings()
    names = [name for name, _ in settings.flat()]
    assert len(names) == len(set(names)) == 53
    fields = [
        f.name
        for section in dataclasses.fields(settings)
        for f in dataclasses.fields(getattr(settings, section.name))
    ]
    assert fields == names, "every field is named as its variable, in every section"
    assert settings.value("kafka_bootstrap") == settings.kafka.kafka_bootstrap
    assert settings.value("grace_seconds") == settings.windows.grace_seconds
    assert settings.value("web_port") == settings.web.web_port
    assert settings.value("alert_rules_file") == settings.alerts.alert_rules_file


def test_the_local_stacks_variables_are_left_to_it_and_the_data_dir_is_the_workers() -> None:
    settings = Settings.from_env({**DEV, "MKPI_STACK_KAFKA_HEAP": "1g", "MKPI_DATA_DIR": "/var/lib/mkpi"})
    assert settings.worker.data_dir == "/var/lib/mkpi"
    assert "stack_kafka_heap" not in dict(settings.flat())
    with pytest.raises(ConfigError, match="MKPI_KAFKA_HEAP is not a known setting"):
        Settings.from_env({**DEV, "MKPI_KAFKA_HEAP": "1g"})


def test_replace_takes_flat_names_and_refuses_unknown_ones() -> None:
    changed = Settings().replace(grace_seconds=5, web_port=7000, kafka_sasl_username="u")
    assert (changed.windows.grace_seconds, changed.web.web_port, changed.kafka.kafka_sasl_username) == (
        5,
        7000,
        "u",
    )
    assert changed.windows.window_sizes == Settings().windows.window_sizes
    with pytest.raises(TypeError, match="not a setting: grace"):
        Settings().replace(grace=5)


@pytest.mark.parametrize(
    "url",
    ["http://u:sekret@localhost:1/0", "redis:/u:sekret@localhost:1/0", "redis://u:sekret@localhost:port/0"],
)
def test_a_bad_redis_url_is_refused_without_showing_its_password(url: str) -> None:
    with pytest.raises(ConfigError) as refused:
        Settings.from_env({**DEV, "MKPI_REDIS_URL": url})
    message = str(refused.value)
    assert "MKPI_REDIS_URL" in message and "sekret" not in message and "u:***@" in message


def test_without_password_masks_what_is_not_a_url_too() -> None:
    assert without_password("redis:/u:sekret@h:1/0") == "redis:/u:***@h:1/0"
    assert without_password("rediss://alice:p@ss:w0rd@h:6380/1") == "rediss://alice:***@h:6380/1"


def test_serving_beyond_loopback_needs_a_web_token() -> None:
    key = {"MKPI_PSEUDONYMIZATION_KEY": "k" * 32}
    with pytest.raises(ConfigError, match=r"MKPI_WEB_HOST='0\.0\.0\.0' serves the board"):
        Settings.from_env({**key, "MKPI_WEB_HOST": "0.0.0.0"}).validate_for_worker()
    with pytest.raises(ConfigError, match="MKPI_WEB_TOKEN: too short"):
        Settings.from_env(
            {**key, "MKPI_WEB_HOST": "0.0.0.0", "MKPI_WEB_TOKEN": "short"}
        ).validate_for_worker()
    Settings.from_env({**key, "MKPI_WEB_HOST": "0.0.0.0", "MKPI_WEB_TOKEN": "t" * 32}).validate_for_worker()
    for loopback in ("127.0.0.1", "localhost", "::1"):
        Settings.from_env({**key, "MKPI_WEB_HOST": loopback}).validate_for_worker()
    assert Settings.from_env({**key, "MKPI_WEB_TOKEN": "t" * 32}).redacted()["web_token"] == "***"


def test_a_worker_role_is_one_of_all_ingest_or_agent() -> None:
    assert (Settings.from_env(DEV).worker.runs_ingest, Settings.from_env(DEV).worker.runs_agent) == (
        True,
        True,
    )
    ingest = Settings.from_env({**DEV, "MKPI_WORKER_ROLE": "ingest"}).worker
    assert (ingest.runs_ingest, ingest.runs_agent) == (True, False)
    with pytest.raises(ConfigError, match="MKPI_WORKER_ROLE='both': one of all, ingest, agent"):
        Settings.from_env({**DEV, "MKPI_WORKER_ROLE": "both"})
