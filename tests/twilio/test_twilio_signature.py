"""X-Twilio-Signature: both documented vectors, port variants, proxy URL reconstruction."""

from __future__ import annotations

from engine.twilio.signature import (
    candidate_urls,
    compute_signature,
    mismatch_details,
    port_variants,
    proxy_headers_present,
    public_url,
    tried_urls,
    validate,
)

WEBHOOK_PARAMS = {"CallSid": "CA1234567890ABCDE", "Caller": "+12349013030", "Digits": "1234",
                  "From": "+12349013030", "To": "+18005551212"}
WEBHOOK_URL = "https://mycompany.com/myapp.php?foo=1&bar=2"


def test_websocket_vector() -> None:
    assert compute_signature("12345", "wss://example.com/media") == "7PR3qMkpDyEJtMrVOY/LDyNq8J8="
    assert validate("12345", "7PR3qMkpDyEJtMrVOY/LDyNq8J8=", "wss://example.com/media")


def test_webhook_vector() -> None:
    assert compute_signature("12345", WEBHOOK_URL, WEBHOOK_PARAMS) == "0/KCTR6DLpKmkAf8muzZqo1nDgQ="
    assert validate("12345", "0/KCTR6DLpKmkAf8muzZqo1nDgQ=", WEBHOOK_URL, WEBHOOK_PARAMS)
    as_pairs = list(reversed(list(WEBHOOK_PARAMS.items())))
    assert compute_signature("12345", WEBHOOK_URL, as_pairs) == "0/KCTR6DLpKmkAf8muzZqo1nDgQ="


def test_with_and_without_default_port() -> None:
    sig = compute_signature("12345", "wss://example.com/media")
    assert validate("12345", sig, "wss://example.com:443/media")
    sig443 = compute_signature("12345", "wss://example.com:443/media")
    assert validate("12345", sig443, "wss://example.com/media")
    assert not validate("12345", sig, "wss://example.com:8443/media")
    assert port_variants("ws://h:80/p") == ["ws://h:80/p", "ws://h/p"]
    assert port_variants("ws://h:81/p") == ["ws://h:81/p"]
    assert port_variants("ws://h:bad/p") == ["ws://h:bad/p"]


def test_rejects_wrong_token_url_or_signature() -> None:
    sig = compute_signature("12345", "wss://example.com/media")
    assert not validate("54321", sig, "wss://example.com/media")
    assert not validate("12345", sig, "wss://example.com/other")
    assert not validate("12345", sig[:-2] + "A=", "wss://example.com/media")
    assert not validate("12345", None, "wss://example.com/media")
    assert not validate("12345", "", "wss://example.com/media")
    assert not validate("", sig, "wss://example.com/media")
    assert not validate("12345", "ü" * 28, "wss://example.com/media")


def test_any_candidate_url_may_match() -> None:
    sig = compute_signature("12345", "ws://127.0.0.1:8080/twilio/media")
    assert validate("12345", sig, ["wss://127.0.0.1:8080/twilio/media", "ws://127.0.0.1:8080/twilio/media"])


def test_candidate_urls_without_proxy_trust_ignore_forwarded_headers() -> None:
    headers = [(b"X-Forwarded-Proto", b"https"), (b"X-Forwarded-Host", b"evil.example")]
    urls = candidate_urls("/twilio/media", headers, trust_proxy_headers=False, host_header="sori.internal:8080")
    assert urls == ["wss://sori.internal:8080/twilio/media", "ws://sori.internal:8080/twilio/media"]


def test_candidate_urls_from_trusted_proxy_headers() -> None:
    headers = [(b"x-forwarded-proto", b"https, http"), (b"X-Forwarded-Host", b"voice.example.com")]
    urls = candidate_urls("/twilio/media", headers, trust_proxy_headers=True, host_header="127.0.0.1:8080")
    assert urls == ["wss://voice.example.com/twilio/media"]
    mapping = {"X-Forwarded-Proto": "http"}
    assert candidate_urls("/p", mapping, trust_proxy_headers=True, host_header="h") == ["ws://h/p"]
    assert candidate_urls("/p", [], trust_proxy_headers=True, host_header=None) == []


def test_public_url_override() -> None:
    assert public_url("/twilio/media", [], trust_proxy_headers=True, host_header="x",
                      public_url_override="wss://pub.example.com") == "wss://pub.example.com/twilio/media"
    assert public_url("/twilio/media", [], trust_proxy_headers=False, host_header="x",
                      public_url_override="wss://pub.example.com/custom") == "wss://pub.example.com/custom"
    assert public_url("/p", [], trust_proxy_headers=False, host_header=None) is None


def test_tried_urls_are_what_validate_compares() -> None:
    urls = ["wss://h/p", "ws://h:81/p"]
    assert tried_urls(urls) == ["wss://h/p", "wss://h:443/p", "ws://h:81/p"]
    for url in tried_urls(urls):
        assert validate("12345", compute_signature("12345", url), urls)
    assert tried_urls("ws://h/p") == ["ws://h/p", "ws://h:80/p"]


def test_proxy_headers_present() -> None:
    headers = [(b"X-Forwarded-For", b"1.2.3.4"), (b"Forwarded", b"for=1.2.3.4"), (b"Host", b"h")]
    assert proxy_headers_present(headers) == ["forwarded", "x-forwarded-for"]
    assert proxy_headers_present({"X-Forwarded-Proto": "https"}) == ["x-forwarded-proto"]
    assert proxy_headers_present([]) == []


def test_mismatch_details() -> None:
    proxied = [(b"x-forwarded-proto", b"https"), (b"x-forwarded-host", b"pub.example")]
    urls = candidate_urls("/m?token=s3cret", proxied, trust_proxy_headers=False, host_header="10.0.0.5:8080")
    details = mismatch_details(urls, proxied, trust_proxy_headers=False)
    assert details["tried_urls"] == "wss://10.0.0.5:8080/m?… ws://10.0.0.5:8080/m?…"  # the query is not logged
    assert details["url_from"] == "Host header" and details["proxy_headers_trusted"] is False
    assert details["proxy_headers"] == "x-forwarded-proto,x-forwarded-host" and "hint" in details
    assert "s3cret" not in str(details)
    override = mismatch_details(["wss://pub.example/m"], proxied, trust_proxy_headers=False,
                                public_url_override="wss://pub.example")
    assert override["url_from"] == "twilio.public_url" and "hint" not in override
    assert override["tried_urls"] == "wss://pub.example/m wss://pub.example:443/m"
    assert mismatch_details([], [], trust_proxy_headers=True) == {
        "tried_urls": "none (no Host header)", "url_from": "Host header", "proxy_headers": "none",
        "proxy_headers_trusted": True}
