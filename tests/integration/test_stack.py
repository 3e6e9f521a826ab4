"""The project's own launcher for the real broker and Redis."""

import dataclasses
import shutil
import socket

import pytest

from agents.settings import Settings
from devtools.stack.kafka import KafkaBroker
from devtools.stack.process import StackError, port_is_open
from devtools.stack.redis import LocalRedis
from devtools.stack.settings import StackSettings

pytestmark = pytest.mark.kafka


def test_up_reuses_a_healthy_broker_and_redis(local_stack: Settings) -> None:
    broker = KafkaBroker.from_settings(local_stack)
    assert broker.is_ready()
    assert broker.start().startswith("reusing")
    assert LocalRedis.from_settings(local_stack).start().startswith("reusing")


def test_a_taken_port_is_reported_not_overrun(local_stack: Settings, tmp_path: object) -> None:
    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", 0))
        squatter.listen()
        port = squatter.getsockname()[1]
        settings = Settings.from_env(
            {
                **local_stack.as_environment(),
                "MKPI_KAFKA_BOOTSTRAP": f"127.0.0.1:{port}",
                "MKPI_REDIS_URL": f"redis://127.0.0.1:{port}/0",
            }
        )
        with pytest.raises(StackError, match="taken"):
            KafkaBroker.from_settings(settings).start(stall_seconds=5)
        with pytest.raises(StackError, match="does not answer Redis"):
            LocalRedis.from_settings(settings).start()


def test_a_second_broker_starts_restarts_after_kill_and_stops(
    local_stack: Settings, tmp_path: object
) -> None:
    """A broker of its own on free ports: started, SIGKILLed, started again, stopped."""
    from devtools.stack.process import free_port

    settings = local_stack.replace(kafka_bootstrap=f"127.0.0.1:{free_port()}")
    stack = StackSettings.from_env(
        {
            "MKPI_STACK_KAFKA_CONTROLLER_PORT": str(free_port()),
            "MKPI_STACK_KAFKA_SASL_SSL_PORT": str(free_port()),
            "MKPI_STACK_KAFKA_SSL_PORT": str(free_port()),
        }
    )
    broker = KafkaBroker.from_settings(settings, stack)
    try:
        assert broker.start().startswith("started")
        user, password = broker.scram_credentials()
        assert user and len(password) >= 24
        broker.kill()
        assert not broker.is_ready(timeout=2)
        assert broker.start().startswith("started")
        assert broker.is_ready()
        assert broker.start().startswith("reusing")
        # A broker of this project whose configuration changed is restarted, not reused.
        without_ssl = dataclasses.replace(broker, ssl_port=0)
        assert without_ssl.start().startswith("started")
        assert not port_is_open(broker.host, broker.ssl_port)
        assert broker.scram_credentials() == (user, password)
    finally:
        assert broker.stop().startswith("stopped")
    assert broker.running_pid() is None
    assert not broker.is_ready(timeout=2)
    shutil.rmtree(broker.data_dir)


def test_the_local_redis_keeps_its_data_across_a_restart(local_stack: Settings, tmp_path: object) -> None:
    """The view and the visitor sketches survive `mkpi stack down` and `up` (append-only file),
    and a full Redis refuses writes instead of evicting keys."""
    from agents.redis.connections import sync_redis_client
    from devtools.stack.process import free_port

    settings = local_stack.replace(redis_url=f"redis://127.0.0.1:{free_port()}/0")
    server = LocalRedis.from_settings(settings, StackSettings.from_env({"MKPI_STACK_DIR": str(tmp_path)}))
    try:
        assert server.start().startswith("started")
        client = sync_redis_client(settings)
        client.set("mkpi:kept", "yes")
        assert client.config_get("maxmemory-policy") == {"maxmemory-policy": "noeviction"}
        client.close()
        server.stop()
        assert server.start().startswith("started")
        client = sync_redis_client(settings)
        assert client.get("mkpi:kept") == b"yes"
        client.close()
    finally:
        server.stop()
