"""The operator's one config module: defaults, overrides, and malformed settings named."""

from __future__ import annotations

import pytest

from poolbench_operator.config import Config, ConfigError


def test_defaults_without_environment() -> None:
    config = Config.from_env({})
    assert config == Config()
    assert config.workload_image == "poolbench-workload:dev"
    assert config.max_concurrent_benchmarks == 64
    assert config.watch_timeout_seconds == 300
    assert config.postgres_address == "service"
    assert config.namespace == "poolbench-system"
    assert config.poll_ms == 500
    assert config.metrics_port == 8000


def test_every_setting_is_read() -> None:
    config = Config.from_env(
        {
            "POOLBENCH_WORKLOAD_IMAGE": "registry.local/w:1",
            "POOLBENCH_MAX_CONCURRENT": "3",
            "POOLBENCH_WATCH_TIMEOUT": "30",
            "POOLBENCH_POSTGRES_ADDRESS": "localhost:15432",
            "POOLBENCH_NAMESPACE": "ops",
            "POOLBENCH_POLL_MS": "100",
            "POOLBENCH_METRICS_PORT": "9464",
        }
    )
    assert config == Config("registry.local/w:1", 3, 30, "localhost:15432", "ops", 100, 9464)
    assert config.poll_seconds == 0.1


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("POOLBENCH_MAX_CONCURRENT", "many"),
        ("POOLBENCH_MAX_CONCURRENT", "0"),
        ("POOLBENCH_WATCH_TIMEOUT", "1.5"),
        ("POOLBENCH_POLL_MS", "0"),
        ("POOLBENCH_POLL_MS", "0.25"),
        ("POOLBENCH_POSTGRES_ADDRESS", "localhost"),
        ("POOLBENCH_POSTGRES_ADDRESS", "host:port"),
        ("POOLBENCH_POSTGRES_ADDRESS", ":5432"),
        ("POOLBENCH_METRICS_PORT", "65536"),
        ("POOLBENCH_METRICS_PORT", "-1"),
        ("POOLBENCH_METRICS_PORT", "http"),
    ],
)
def test_a_malformed_setting_is_refused_by_name(name: str, value: str) -> None:
    with pytest.raises(ConfigError, match=name):
        Config.from_env({name: value})


def test_pod_ip_is_an_address_mode() -> None:
    assert Config.from_env({"POOLBENCH_POSTGRES_ADDRESS": "pod-ip"}).postgres_address == "pod-ip"
