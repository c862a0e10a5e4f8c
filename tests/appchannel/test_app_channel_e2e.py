"""The application channel end to end: engine + emulator, a Twilio peer, an application on the channel."""

from __future__ import annotations

import base64
import json

import numpy as np
import pytest
import trio
from trio_websocket import ConnectionRejected, open_websocket

from engine import events as ev
from tests.appchannel.support import (
    SECRET,
    OutboundClear,
    OutboundMark,
    OutboundMedia,
    app_client,
    make_config,
    mulaw_of,
    phrase_pcm,
    running_engine,
    silence,
    twilio_peer,
)

SID = "MZtest0001"


async def test_refused_before_the_upgrade_without_the_secret() -> None:
    with trio.fail_after(20):
        async with running_engine(make_config()) as (engine, _collector):
            assert engine.app_channel is not None
            port = engine.app_channel.port or 0
            cases = [([], "/app", 401), ([(b"Authorization", b"Bearer wrong")], "/app", 403),
                     ([(b"Authorization", b"Basic " + SECRET.encode())], "/app", 401),
                     ([(b"Authorization", f"Bearer {SECRET}".encode())], "/elsewhere", 404)]
            for headers, path, status in cases:
                with pytest.raises(ConnectionRejected) as rejected:
                    async with open_websocket("127.0.0.1", port, path, use_ssl=False, extra_headers=headers):
                        pass
                assert rejected.value.status_code == status
            async with trio.open_nursery() as nursery, app_client(engine, nursery) as app:
                hello = await app.wait(lambda: app.of("channel.hello"))
                assert hello[0]["subscribed"] == "*"
                nursery.cancel_scope.cancel()
            assert engine.metrics.render().count("app_channel_rejected_total") >= 1


async def test_no_secret_configured_refuses_everyone() -> None:
    config = make_config()
    config.app_channel.secret = None
    with trio.fail_after(20):
        async with running_engine(config) as (engine, _):
            assert engine.app_channel is not None
            with pytest.raises(ConnectionRejected) as rejected:
                async with open_websocket("127.0.0.1", engine.app_channel.port or 0, "/app", use_ssl=False,
                                          extra_headers=[(b"Authorization", b"Bearer anything")]):
                    pass
            assert rejected.value.status_code == 403


async def test_every_command_and_event() -> None:
    with trio.fail_after(30):
        async with running_engine(make_config()) as (engine, collector), trio.open_nursery() as nursery:
            async with app_client(engine, nursery) as app:
                await app.wait(lambda: app.of("channel.hello"))
                async with twilio_peer(engine, nursery) as peer:
                    await peer.audio(silence(100))
                    started = await app.wait(lambda: app.of("call.started"))
                    assert started[0]["stream_sid"] == SID
                    # play: PCM16 at 16 kHz (resampled), then an application mark
                    pcm16k = (np.sin(np.arange(1600) / 5) * 8000).astype("<i2")  # 100 ms at 16 kHz
                    await app.play(SID, pcm16k.tobytes(), encoding="pcm16", sample_rate=16000, playback_id="hi")
                    await app.send(type="mark", stream_sid=SID, name="after-hi")
                    await app.wait(lambda: app.of("playback.finished"))
                    await app.wait(lambda: app.of("mark"))
                    assert peer.media_bytes() == 800  # 100 ms of μ-law at 8 kHz, in 20 ms frames
                    assert all(len(m.media.payload) == 160 for m in peer.received if isinstance(m, OutboundMedia))
                    kinds = [m["type"] for m in app.messages if m["type"].startswith(("playback", "mark"))]
                    assert kinds == ["playback.started", "playback.finished", "mark"]
                    assert app.of("playback.started")[0]["playback_id"] == "hi"
                    assert app.of("mark")[0] == {**app.of("mark")[0], "name": "after-hi", "cleared": False}
                    # dtmf from Twilio reaches the application
                    await peer.dtmf("7")
                    assert (await app.wait(lambda: app.of("dtmf")))[0]["digit"] == "7"
                    # clear: a long playback cut, with how much was played
                    peer.echo_marks = False
                    await app.play(SID, silence(5000), playback_id="long")
                    await app.wait(lambda: [m for m in app.of("playback.started") if m["playback_id"] == "long"])
                    await app.send(type="clear", stream_sid=SID)
                    cut = (await app.wait(lambda: app.of("playback.interrupted")))[0]
                    assert cut["playback_id"] == "long" and cut["reason"] == "clear"
                    assert 0 <= cut["played_ms"] < 5000 and cut["duration_ms"] == 5000
                    await peer.wait(lambda: peer.count(OutboundClear))
                    assert peer.media_bytes() < 800 + 5000 * 8  # never the whole long playback
                    # stop: the media stream ends (WebSocket closed by sori with 1000), the call ends
                    await app.send(type="stop", stream_sid=SID)
                    await peer.wait(lambda: peer.closed)
                    assert peer.ws.closed is not None and peer.ws.closed.code == 1000
                    ended = await app.wait(lambda: app.of("call.ended"))
                    assert ended[0]["reason"] == "app_stop"
                # the events on the channel are the sinks' events, in the same order
                same = [json.loads(ev.encode(e)) for e in collector.events if e.stream_sid == SID]
                await app.wait(lambda: len([m for m in app.messages if m.get("stream_sid") == SID
                                            and not m["type"].startswith("channel.")]) >= len(same))
                channel = [m for m in app.messages if m.get("stream_sid") == SID and not m["type"].startswith("channel.")]
                assert channel == same
            nursery.cancel_scope.cancel()


async def test_bad_commands_get_errors_and_the_call_goes_on() -> None:
    with trio.fail_after(30):
        async with running_engine(make_config()) as (engine, _), trio.open_nursery() as nursery:
            async with app_client(engine, nursery) as app, twilio_peer(engine, nursery) as peer:
                await peer.audio(silence(40))
                await app.wait(lambda: app.of("call.started"))
                bad = [
                    "not json",
                    json.dumps({"type": "dance", "stream_sid": SID, "ref": "r1"}),
                    json.dumps({"type": "play", "stream_sid": "MZnope", "audio": "AAAA", "ref": "r2"}),
                    json.dumps({"type": "play", "stream_sid": SID, "audio": "@@@", "ref": "r3"}),
                    json.dumps({"type": "play", "stream_sid": SID, "audio": "AAAA", "sample_rate": 16000, "ref": "r4"}),
                    json.dumps({"type": "play", "stream_sid": SID, "audio": "AAAA", "encoding": "pcm16", "ref": "r5"}),
                    json.dumps({"type": "play", "stream_sid": SID, "audio": "", "ref": "r6"}),
                    json.dumps({"type": "mark", "stream_sid": SID, "name": "", "ref": "r7"}),
                    json.dumps({"type": "clear"}),
                ]
                for text in bad:
                    await app.ws.send_message(text)
                await app.ws.send_message(b"\x00binary")
                await app.wait(lambda: len(app.of("channel.error")) >= len(bad) + 1)
                errors = app.of("channel.error")
                codes = [e["code"] for e in errors]
                assert codes == ["json", "unknown_command", "unknown_call", "schema", "bad_audio", "bad_audio",
                                 "empty_audio", "schema", "schema", "binary"]
                assert [e.get("ref") for e in errors][1:8] == ["r1", "r2", "r3", "r4", "r5", "r6", "r7"]
                # the call is unaffected: a good command still plays
                await app.play(SID, silence(40), playback_id="ok")
                await app.wait(lambda: app.of("playback.finished"))
                await peer.stop()
                await app.wait(lambda: app.of("call.ended"))
            nursery.cancel_scope.cancel()


async def test_one_call_subscription() -> None:
    with trio.fail_after(30):
        async with running_engine(make_config()) as (engine, _), trio.open_nursery() as nursery:
            async with twilio_peer(engine, nursery) as one, \
                    twilio_peer(engine, nursery, stream_sid="MZtest0002", call_sid="CAtest0002") as two:
                await one.audio(silence(20))
                await two.audio(silence(20))
                while engine.control(SID) is None or engine.control("MZtest0002") is None:
                    await trio.sleep(0.01)
                async with app_client(engine, nursery, call="CAtest0002") as app:
                    assert (await app.wait(lambda: app.of("channel.hello")))[0]["subscribed"] == "CAtest0002"
                    await one.dtmf("1")
                    await two.dtmf("2")
                    await app.play(SID, silence(20), ref="other")
                    await app.wait(lambda: app.of("dtmf") and app.of("channel.error"))
                    assert [m["digit"] for m in app.of("dtmf")] == ["2"]
                    assert app.of("channel.error")[0]["code"] == "unknown_call"
                    assert {m["stream_sid"] for m in app.messages if "stream_sid" in m and m["type"] != "channel.error"} \
                        == {"MZtest0002"}
                await one.stop()
                await two.stop()
            nursery.cancel_scope.cancel()


async def test_slow_application_gets_counted_drops_and_the_call_is_unaffected() -> None:
    with trio.fail_after(30):
        # send budget 2 s: the queue must overflow (two bursts after the writer blocks) before the budget closes
        # the stalled connection, or no drop is ever counted; 300 ms left that race to a loaded machine's speed
        config = make_config("app_channel.queue=3", "budgets.send=2000")
        async with running_engine(config) as (engine, collector), trio.open_nursery() as nursery:
            assert engine.hub is not None
            hub = engine.hub
            async with app_client(engine, nursery, read=False), twilio_peer(engine, nursery) as peer:
                await peer.audio(silence(20))
                await collector.wait(lambda: collector.of(ev.CallStarted))
                while not hub.subscribers:
                    await trio.sleep(0.01)
                sub = hub.subscribers[0]
                # The application never reads: once its socket buffers are full the writer blocks, the
                # connection's queue (3) fills and later events are dropped for it alone.
                # Bursts of 3 (the queue's size) with a pause between: a drop means the writer could not
                # drain 3 messages in that pause, i.e. it is stuck on the application's full socket.
                big = "9" * 65536
                while sub.dropped == 0:
                    for _ in range(3):
                        hub.publish(ev.Dtmf(call_sid="CAtest0001", stream_sid=SID, digit=big))
                    await trio.sleep(0.01)
                assert f"app_channel_events_dropped_total {sub.dropped}" in engine.metrics.render()
                # the call is unaffected: its events reach the sinks, its playback runs
                await peer.dtmf("4")
                await collector.wait(lambda: [e for e in collector.of(ev.Dtmf) if e.digit == "4"])
                control = engine.control(SID)
                assert control is not None
                await control.play(silence(40), playback_id="still")
                await collector.wait(lambda: collector.of(ev.PlaybackFinished))
                # the stalled connection is closed after budgets.send; the call still goes on
                while hub.subscribers:
                    await trio.sleep(0.01)
                await peer.stop()
                ended = await collector.wait(lambda: collector.of(ev.CallEnded))
                assert ended[0].reason == "stop"
            nursery.cancel_scope.cancel()


async def test_application_disconnects_mid_call_the_call_keeps_running() -> None:
    with trio.fail_after(30):
        async with running_engine(make_config()) as (engine, collector), trio.open_nursery() as nursery:
            async with twilio_peer(engine, nursery) as peer:
                await peer.audio(silence(20))
                while engine.control(SID) is None:
                    await trio.sleep(0.01)
                async with app_client(engine, nursery) as app:
                    assert (await app.wait(lambda: app.of("channel.hello")))[0]["calls"] == [SID]
                    await app.play(SID, silence(300), playback_id="bye")
                    await app.wait(lambda: app.of("playback.started"))
                # the application is gone; the call and its playback go on
                assert engine.hub is not None and not engine.hub.subscribers
                await collector.wait(lambda: collector.of(ev.PlaybackFinished))
                await peer.audio(silence(100))
                await peer.dtmf("5")
                await collector.wait(lambda: collector.of(ev.Dtmf))
                assert peer.media_bytes() == 300 * 8
                # a new connection picks the call up
                async with app_client(engine, nursery) as again:
                    await again.wait(lambda: again.of("channel.hello"))
                    await again.play(SID, silence(40), playback_id="again")
                    await again.wait(lambda: again.of("playback.finished"))
                await peer.stop()
                ended = await collector.wait(lambda: collector.of(ev.CallEnded))
                assert ended[0].reason == "stop"
            nursery.cancel_scope.cancel()


async def test_barge_in_clears_playback_when_the_caller_speaks() -> None:
    with trio.fail_after(30):
        async with running_engine(make_config()) as (engine, _collector), trio.open_nursery() as nursery:
            async with app_client(engine, nursery) as app, twilio_peer(engine, nursery) as peer:
                peer.echo_marks = False  # Twilio is still playing: nothing echoed
                await peer.audio(silence(200))
                await app.wait(lambda: app.of("call.started"))
                await app.play(SID, silence(10_000), playback_id="prompt")
                await app.wait(lambda: app.of("playback.started"))
                await peer.audio(mulaw_of(phrase_pcm()))
                cut = (await app.wait(lambda: app.of("playback.interrupted")))[0]
                assert cut["reason"] == "barge_in" and cut["playback_id"] == "prompt"
                types = [m["type"] for m in app.messages]
                assert types.index("speech.started") < types.index("playback.interrupted")
                await peer.wait(lambda: peer.count(OutboundClear))
                await peer.stop()
                await app.wait(lambda: app.of("call.ended"))
            nursery.cancel_scope.cancel()
            assert "playback_barge_in_total 1" in engine.metrics.render()


async def test_embedding_api_handle_from_on_event() -> None:
    with trio.fail_after(30):
        config = make_config("app_channel.enabled=false")
        async with running_engine(config) as (engine, collector), trio.open_nursery() as nursery:
            assert engine.app_channel is None
            answered: list[str] = []

            def answer(event: ev.Event) -> None:  # an application answering every dtmf at once
                if isinstance(event, ev.Dtmf):
                    control = engine.control(event.stream_sid)
                    assert control is not None
                    answered.append(control.play_nowait(silence(60)))
                    control.mark_nowait(f"after-{event.digit}")

            collector.hook = answer
            async with twilio_peer(engine, nursery) as peer:
                await peer.audio(silence(20))
                await peer.dtmf("3")
                await collector.wait(lambda: collector.of(ev.MarkReached))
                assert [e.playback_id for e in collector.of(ev.PlaybackFinished)] == answered == ["p1"]
                assert collector.of(ev.MarkReached)[0].name == "after-3"
                assert peer.count(OutboundMark) == 2 and peer.media_bytes() == 480
                control = engine.control(SID)
                assert control is not None
                await control.stop()
                await collector.wait(lambda: collector.of(ev.CallEnded))
                assert engine.control(SID) is None
            nursery.cancel_scope.cancel()


def test_play_command_schema_is_base64() -> None:
    from engine.appchannel.messages import Play, decode_command

    cmd = decode_command(json.dumps({"type": "play", "stream_sid": "MZ1", "audio": base64.b64encode(b"\x01\x02").decode()}))
    assert isinstance(cmd, Play) and cmd.audio == b"\x01\x02" and cmd.encoding == "mulaw"
