"""The app channel's settings: the secret from SORI_APP_SECRET, redacted; defaults off and on loopback."""

from __future__ import annotations

import pytest

from engine.appchannel.server import check_secret
from engine.config import ConfigError, cli_overrides, load, redacted


def test_secret_from_the_environment_and_redacted() -> None:
    config = load(environ={"SORI_APP_SECRET": "hunter2"})
    assert config.app_channel.secret == "hunter2"
    assert "hunter2" in config.secrets()
    assert redacted(config)["app_channel"]["secret"] == "***"
    assert not config.app_channel.enabled and config.app_channel.host == "127.0.0.1"


def test_playback_settings_are_validated() -> None:
    assert load(environ={}, cli=cli_overrides(["playback.barge_in=false"])).playback.barge_in is False
    with pytest.raises(ConfigError, match=r"playback\.lead_ms"):
        load(environ={}, cli=cli_overrides(["playback.lead_ms=5"]))


def test_check_secret() -> None:
    assert check_secret("s", b"Bearer s") == 0
    assert check_secret("s", b"bearer s") == 0
    assert check_secret("s", None) == 401
    assert check_secret("s", b"Basic s") == 401
    assert check_secret("s", b"Bearer ") == 401
    assert check_secret("s", b"Bearer t") == 403
    assert check_secret(None, b"Bearer s") == 403
    assert check_secret("s", b"Bearer ss") == 403
