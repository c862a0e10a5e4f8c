"""X-Twilio-Signature: HMAC-SHA1 of the public URL (plus sorted POST params for webhooks).

Twilio signs the URL exactly as written in the TwiML (``wss://host/path`` for a stream) and its own
validator also accepts the URL with and without the default port, so :func:`validate` does too.
Behind a TLS proxy the public URL is rebuilt from ``X-Forwarded-Proto``/``X-Forwarded-Host``, but
only when the operator says those headers are trustworthy (otherwise anyone could pick the URL).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
from collections.abc import Iterable, Mapping, Sequence
from urllib.parse import urlsplit, urlunsplit

Params = Mapping[str, str | Sequence[str]] | Iterable[tuple[str, str]]
Headers = Iterable[tuple[bytes, bytes]] | Mapping[str, str]

_DEFAULT_PORTS = {"wss": 443, "https": 443, "ws": 80, "http": 80}
_SCHEME_FROM_PROTO = {"https": "wss", "http": "ws", "wss": "wss", "ws": "ws"}


def _param_pairs(params: Params | None) -> list[tuple[str, str]]:
    if params is None:
        return []
    pairs: list[tuple[str, str]] = []
    items = params.items() if isinstance(params, Mapping) else params
    for key, value in items:
        if isinstance(value, str):
            pairs.append((key, value))
        else:
            pairs.extend((key, v) for v in value)
    return sorted(pairs)


def compute_signature(auth_token: str, url: str, params: Params | None = None) -> str:
    """Twilio's signature: base64(HMAC-SHA1(auth_token, url + concatenated sorted key+value))."""
    data = url + "".join(k + v for k, v in _param_pairs(params))
    digest = hmac.new(auth_token.encode(), data.encode(), hashlib.sha1).digest()
    return base64.b64encode(digest).decode("ascii")


def port_variants(url: str) -> list[str]:
    """The URL as given, plus the same URL with the default port added or removed."""
    parts = urlsplit(url)
    default = _DEFAULT_PORTS.get(parts.scheme)
    if default is None or parts.hostname is None:
        return [url]
    try:
        port = parts.port
    except ValueError:
        return [url]
    host = parts.hostname if ":" not in parts.hostname else f"[{parts.hostname}]"
    userinfo = parts.netloc.rpartition("@")[0]
    prefix = userinfo + "@" if userinfo else ""
    if port is None:
        other = urlunsplit(parts._replace(netloc=f"{prefix}{host}:{default}"))
    elif port == default:
        other = urlunsplit(parts._replace(netloc=f"{prefix}{host}"))
    else:
        return [url]
    return [url, other]


def validate(auth_token: str, signature: str | None, url: str | Iterable[str], params: Params | None = None) -> bool:
    """True if ``signature`` matches any candidate URL (each also with/without the default port).

    Every candidate is compared with :func:`hmac.compare_digest`, without stopping early.
    """
    if not auth_token or not signature:
        return False
    given = signature.strip().encode("ascii", "replace")
    ok = False
    for variant in tried_urls(url):
        expected = compute_signature(auth_token, variant, params).encode("ascii")
        ok |= hmac.compare_digest(expected, given)
    return ok


def tried_urls(url: str | Iterable[str]) -> list[str]:
    """Every URL :func:`validate` compares against for these candidates, in order (port variants included)."""
    urls = [url] if isinstance(url, str) else list(url)
    return [variant for candidate in urls for variant in port_variants(candidate)]


PROXY_HEADERS = ("forwarded", "x-forwarded-proto", "x-forwarded-host", "x-forwarded-port", "x-forwarded-for")


def proxy_headers_present(headers: Headers) -> list[str]:
    """Which proxy headers (``Forwarded``, ``X-Forwarded-*``) the request carries, lower case, in a fixed order."""
    if isinstance(headers, Mapping):
        names = {key.lower() for key in headers}
    else:
        names = {key.decode("latin-1").lower() for key, _ in headers}
    return [name for name in PROXY_HEADERS if name in names]


def _header(headers: Headers, name: str) -> str | None:
    """First value of a header (case-insensitive); comma lists yield their first element."""
    lname = name.lower()
    if isinstance(headers, Mapping):
        for key, value in headers.items():
            if key.lower() == lname:
                return value.split(",")[0].strip() or None
        return None
    bname = lname.encode()
    for key, raw in headers:
        if key.lower() == bname:
            return raw.decode("latin-1").split(",")[0].strip() or None
    return None


def candidate_urls(
    path: str,
    headers: Headers,
    *,
    trust_proxy_headers: bool,
    host_header: str | None,
    public_url_override: str | None = None,
) -> list[str]:
    """The public URLs Twilio may have signed for this upgrade request, most likely first.

    ``public_url_override`` (config ``twilio.public_url``) wins: a full URL is used as is, a bare
    ``wss://host`` gets the request path appended. Without trusted proxy headers the scheme is not
    knowable, so both ``wss`` (what Twilio uses) and ``ws`` (local tools) are candidates.
    """
    if public_url_override:
        parts = urlsplit(public_url_override)
        if parts.path in ("", "/"):
            return [public_url_override.rstrip("/") + path]
        return [public_url_override]
    host = host_header
    schemes = ["wss", "ws"]
    if trust_proxy_headers:
        forwarded_host = _header(headers, "x-forwarded-host")
        forwarded_proto = _header(headers, "x-forwarded-proto")
        if forwarded_host:
            host = forwarded_host
        if forwarded_proto:
            scheme = _SCHEME_FROM_PROTO.get(forwarded_proto.lower())
            if scheme:
                schemes = [scheme]
    if not host:
        return []
    return [f"{scheme}://{host}{path}" for scheme in schemes]


def public_url(
    path: str,
    headers: Headers,
    *,
    trust_proxy_headers: bool,
    host_header: str | None,
    public_url_override: str | None = None,
) -> str | None:
    """The most likely public URL of this request (see :func:`candidate_urls`)."""
    urls = candidate_urls(
        path, headers, trust_proxy_headers=trust_proxy_headers, host_header=host_header,
        public_url_override=public_url_override,
    )
    return urls[0] if urls else None


def mismatch_details(
    urls: Iterable[str],
    headers: Headers,
    *,
    trust_proxy_headers: bool,
    public_url_override: str | None = None,
) -> dict[str, str | bool]:
    """Log fields explaining a signature that matched none of ``urls``.

    The URLs tried (port variants included; a query string is shown as ``?…``), where they came from,
    and which proxy headers were present and whether they were trusted. Never the signature or the token.
    """
    present = proxy_headers_present(headers)
    forwarded_used = trust_proxy_headers and any(h in present for h in ("x-forwarded-host", "x-forwarded-proto"))
    if public_url_override:
        source = "twilio.public_url"
    elif forwarded_used:
        source = "X-Forwarded-* (trusted)"
    else:
        source = "Host header"
    shown = [u.partition("?")[0] + ("?…" if "?" in u else "") for u in tried_urls(urls)]
    details: dict[str, str | bool] = {
        "tried_urls": " ".join(shown) or "none (no Host header)",
        "url_from": source,
        "proxy_headers": ",".join(present) or "none",
        "proxy_headers_trusted": trust_proxy_headers,
    }
    if present and not trust_proxy_headers and not public_url_override:
        details["hint"] = ("proxy headers present but not trusted: behind your own TLS proxy set "
                           "server.trust_proxy_headers=true, or set twilio.public_url")
    return details
