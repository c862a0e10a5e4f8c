"""The engine does not know the emulator: engine/app.py never imports it; the CLI, the demo and tests pass a launcher."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest
import trio

import engine.app
from engine.app import serve
from engine.config import Config, cli_overrides, load


def _imports(path: Path) -> set[str]:
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
        elif isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
    return names


def test_app_imports_no_emulator_even_lazily() -> None:
    imported = _imports(Path(engine.app.__file__))
    assert not [name for name in imported if name.startswith("engine.rtzr.emulator")], imported


def _config() -> Config:
    return load(environ={}, cli=cli_overrides(["server.port=0", "server.admin_port=0", "sinks.jsonl="]))


async def test_an_stt_name_other_than_rtzr_is_refused_with_the_way_to_wire_it() -> None:
    with trio.fail_after(10), pytest.raises(TypeError, match=r"in_process\(\)"):
        await serve(_config(), stt="emulator", handle_signals=False)


async def test_a_launcher_runs_first_and_its_config_and_handle_reach_the_engine() -> None:
    seen: list[str] = []
    handle = object()

    async def launcher(nursery: trio.Nursery, config: Config) -> tuple[Config, object]:
        seen.append(config.rtzr.ws_url)
        from msgspec.structs import replace
        return replace(config, rtzr=replace(config.rtzr, ws_url="ws://127.0.0.1:9/launched")), handle

    with trio.fail_after(30):
        async with trio.open_nursery() as nursery:
            eng = await nursery.start(lambda task_status: serve(_config(), stt=launcher, handle_signals=False,
                                                                 task_status=task_status))
            assert eng.stt_service is handle and eng.emulator is handle
            assert eng.config.rtzr.ws_url == "ws://127.0.0.1:9/launched" and len(seen) == 1
            eng.shutdown()
