"""The emulator as the engine's STT, in-process: what ``sori serve --stt emulator``, ``sori demo`` and tests wire.

``engine.app.serve`` knows no emulator: it takes a launcher (:class:`engine.app.SttLauncher`) that starts
a local STT service in serve()'s nursery and returns the config pointing the RTZR client at it.
"""

from __future__ import annotations

import msgspec
import trio

from engine.config import Config
from engine.log import get_logger
from engine.nursery import StartupError, root_cause
from engine.rtzr.emulator.config import EmulatorConfig
from engine.rtzr.emulator.server import Emulator

log = get_logger(__name__)


class InProcessEmulator:
    """An :class:`engine.app.SttLauncher`: the RTZR emulator on loopback (default: port 0, 100 ms handshake,
    150 ms final), its address and credentials written into ``config.rtzr``."""

    def __init__(self, emulator_config: EmulatorConfig | None = None) -> None:
        self.emulator_config = emulator_config or EmulatorConfig(host="127.0.0.1", port=0)

    async def __call__(self, nursery: trio.Nursery, config: Config) -> tuple[Config, Emulator]:
        emu_config = self.emulator_config
        try:
            emulator: Emulator = await nursery.start(Emulator(emu_config).run)
        except Exception as exc:
            raise StartupError("rtzr emulator", root_cause(exc), (emu_config.host, emu_config.port)) from exc
        config = msgspec.structs.replace(config, rtzr=msgspec.structs.replace(
            config.rtzr, api_base=emulator.api_base, ws_url=emulator.ws_url,
            client_id=emulator.config.client_id, client_secret=emulator.config.client_secret))
        log.warning("stt_emulator_in_use", api_base=emulator.api_base,
                    notice="TRANSCRIPTS ARE EMULATED: the RTZR emulator is running in-process, not the real RTZR")
        return config, emulator


def in_process(emulator_config: EmulatorConfig | None = None) -> InProcessEmulator:
    """``serve(config, stt=in_process(...))``: the engine on the in-process RTZR emulator."""
    return InProcessEmulator(emulator_config)
