"""Config keys of scale-out: SORI_REDIS_URL, server.workers, the Redis password kept out of logs and errors."""

from __future__ import annotations

import pytest

from engine.config import ConfigError, load
from engine.log import setup_logging


def test_sori_redis_url_and_workers_from_the_environment() -> None:
    cfg = load(environ={"SORI_REDIS_URL": "redis://:hunter2@redis:6379/1", "SORI_SERVER_WORKERS": "auto",
                        "SORI_REDIS_LEASE_TTL_MS": "5000"})
    assert cfg.redis.url == "redis://:hunter2@redis:6379/1" and cfg.redis.lease_ttl_ms == 5000
    assert cfg.server.workers == "auto"
    assert "hunter2" in cfg.secrets()  # the log redactor replaces it
    assert load(environ={"SORI_SERVER_WORKERS": "3"}).server.workers == 3
    assert load(environ={}).redis.url == ""  # no Redis: the local budget, as before


@pytest.mark.parametrize("url", ["http://redis:6379", "redis://:hunter2@/0", "redis://:hunter2@redis:6379/x",
                                 "redis://:hunter2@redis:99999"])
def test_a_bad_redis_url_is_one_line_without_the_password(url: str) -> None:
    with pytest.raises(ConfigError) as info:
        load(environ={"SORI_REDIS_URL": url})
    assert str(info.value).startswith("redis.url:") and "hunter2" not in str(info.value)


def test_workers_must_be_a_count_or_auto() -> None:
    with pytest.raises(ConfigError, match=r"server\.workers"):
        load(environ={"SORI_SERVER_WORKERS": "many"})
    with pytest.raises(ConfigError, match=r"server\.workers"):
        load(environ={"SORI_SERVER_WORKERS": "0"})


def test_redis_password_is_redacted_in_logs() -> None:
    import io
    import logging

    stream = io.StringIO()
    cfg = load(environ={"SORI_REDIS_URL": "redis://:hunter2@redis:6379/0"})
    setup_logging("info", secrets=cfg.secrets(), stream=stream)
    logging.getLogger("t").info("connecting to redis://:hunter2@redis:6379/0")
    assert "hunter2" not in stream.getvalue() and "***" in stream.getvalue()
