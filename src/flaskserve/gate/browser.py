"""Keeping browsers from being turned against the server: cross-site requests (CSRF), foreign
origins (CORS), DNS rebinding, and pages that cannot be sniffed or framed.

Any web page a person opens can make their browser send requests to a server that person
reaches, a flaskserve on their laptop included. Three checks, cheapest first, run before any
other gate (a refusal costs no key lookup and no body read):

1. Host (DNS rebinding): a server bound to a loopback address answers only loopback Host names
   (`localhost`, `*.localhost`, `127.x.x.x`, `[::1]`, any port) and `--allowed-hosts`; 421
   otherwise. A page on `evil.example` whose name was re-pointed at 127.0.0.1 sends
   `Host: evil.example`, so it is refused. A server bound to another address answers any Host
   unless `--allowed-hosts` is set (then those and the loopback names).
2. Origin: a request from a page on another origin (an `Origin` header that is neither this
   server's, as the Host header or `--public-url` name it, nor in `--cors-origins`) gets 403.
   Browsers send `Origin` on every cross-origin fetch and form POST; clients that are not
   browsers send none and are not affected. Allow-listed origins get CORS answers: preflights
   (204) and `Access-Control-Allow-Origin` on every response.
3. Body type: a POST to a flaskserve route whose Content-Type is one a cross-site HTML form or a
   fetch without preflight can send (form-urlencoded, multipart/form-data, text/plain) gets 415.
   No Content-Type at all (what tritonclient sends), JSON, octet-stream and SageMaker's text/csv
   pass. Routes an application adds to the app are left to it (the Origin check still applies).

Every response carries `X-Content-Type-Options: nosniff`; HTML pages also carry a strict
Content-Security-Policy (same-origin scripts, styles and fetches only; never framed).
"""

from __future__ import annotations

import ipaddress
from collections.abc import Callable
from dataclasses import dataclass
from functools import lru_cache
from urllib.parse import urlsplit

from flask import Flask, Response, request

from flaskserve.core.errors import FlaskServeError, Forbidden
from flaskserve.protocol.hook_chain import HookChain
from flaskserve.protocol.http_context import current, state_of
from flaskserve.settings import Settings

#: Body types a page on another site can send without a CORS preflight.
SIMPLE_BODY_TYPES = frozenset(
    {"application/x-www-form-urlencoded", "multipart/form-data", "text/plain"}
)
ALLOW_METHODS = "GET, HEAD, POST, OPTIONS"
ALLOW_HEADERS = (
    "Authorization, Content-Type, Inference-Header-Content-Length, X-API-Key, X-Request-Id, "
    "X-Amzn-SageMaker-Target-Model"
)
EXPOSE_HEADERS = "Inference-Header-Content-Length, Retry-After, X-Request-Id, WWW-Authenticate"
#: Seconds a browser may cache a preflight's answer (Chromium caps it at 7200).
MAX_AGE = "600"
#: The playground's scripts, styles and fetches are all same-origin files (web/static); the
#: favicon is a `data:` URL. Pages are never framed (clickjacking).
CONTENT_SECURITY_POLICY = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "connect-src 'self'; object-src 'none'; base-uri 'none'; form-action 'self'; "
    "frame-ancestors 'none'"
)
_SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
_DEFAULT_PORTS = {"http": "80", "https": "443"}
_OWN, _ALLOWED, _FOREIGN = "own", "allowed", "foreign"


def split_host(value: str) -> tuple[str, str | None]:
    """(name, port) of a Host header or a host[:port] setting; names lowercased, IPv6 unbracketed,
    a trailing dot dropped (`localhost.` is `localhost`)."""
    value = value.strip().lower()
    port: str | None = None
    if value.startswith("["):
        name, _, rest = value[1:].partition("]")
        port = rest[1:] if rest.startswith(":") else None
    elif value.count(":") == 1:
        name, _, port = value.partition(":")
    else:
        name = value
    return name.rstrip("."), port or None


def is_loopback(name: str) -> bool:
    """`localhost`, a `*.localhost` name (RFC 6761: browsers resolve these to loopback without
    asking DNS, so a rebinding attacker cannot point them elsewhere) or a loopback address."""
    if name == "localhost" or name.endswith(".localhost"):
        return True
    try:
        address = ipaddress.ip_address(name)
    except ValueError:
        return False
    mapped = getattr(address, "ipv4_mapped", None)
    return address.is_loopback or (mapped is not None and mapped.is_loopback)


def _names(value: str | None) -> list[str]:
    return [item.strip() for item in (value or "").split(",") if item.strip()]


def _origin_of(url: str) -> str:
    """`scheme://host[:port]` of `url`, lowercased, without a default port or a path; "" (no
    origin at all) for one that cannot be parsed."""
    try:
        parts = urlsplit(url.strip())
    except ValueError:  # e.g. an unclosed "[" of an IPv6 address
        return ""
    scheme = parts.scheme.lower()
    name, port = split_host(parts.netloc.rpartition("@")[2])
    if port == _DEFAULT_PORTS.get(scheme):
        port = None
    host = f"[{name}]" if ":" in name else name
    return f"{scheme}://{host}" + (f":{port}" if port else "")


@dataclass(frozen=True)
class Policy:
    """What the checks allow, read once from the settings."""

    #: (name, port or None) pairs answered besides loopback ones; None: any Host.
    hosts: frozenset[tuple[str, str | None]] | None
    #: Origins given CORS answers (`scheme://host[:port]`).
    cors_origins: frozenset[str]
    #: `--cors-origins '*'`: every origin is allowed (a public API whose clients send keys).
    any_origin: bool
    #: The origin of `--public-url`: this server's own, whatever Host a proxy passes on.
    public_origin: str | None
    #: Where the server was bound, for the refusal's hint.
    bound: str

    @classmethod
    def from_settings(cls, settings: Settings) -> Policy:
        allowed = _names(settings.allowed_hosts)
        bound_name, _ = split_host(settings.host)
        hosts: frozenset[tuple[str, str | None]] | None
        if "*" in allowed or (not allowed and not is_loopback(bound_name)):
            hosts = None
        else:
            hosts = frozenset(split_host(name) for name in allowed)
        origins = _names(settings.cors_origins)
        return cls(
            hosts=hosts,
            cors_origins=frozenset(_origin_of(o) for o in origins if o != "*"),
            any_origin="*" in origins,
            public_origin=_origin_of(settings.public_url) if settings.public_url else None,
            bound=f"{settings.host}:{settings.port}",
        )

    def host_allowed(self, host: str) -> bool:
        if self.hosts is None:
            return True
        name, port = split_host(host)
        return is_loopback(name) or (name, None) in self.hosts or (name, port) in self.hosts

    def is_own(self, origin: str, host: str | None) -> bool:
        """Whether `origin` is this server's: the Host the browser sent, or `--public-url`. The
        scheme is not compared, as a TLS-terminating proxy passes https requests on as http."""
        normalised = _origin_of(origin)
        if normalised == self.public_origin:
            return True
        if host is None:
            return False
        scheme, _, netloc = normalised.partition("://")
        name, port = split_host(host)
        if port == _DEFAULT_PORTS.get(scheme):
            port = None
        own = f"[{name}]" if ":" in name else name
        return netloc == own + (f":{port}" if port else "")

    def is_cors_allowed(self, origin: str) -> bool:
        return self.any_origin or _origin_of(origin) in self.cors_origins

    @property
    def cors(self) -> bool:
        return self.any_origin or bool(self.cors_origins)


def install(app: Flask, settings: Settings, hooks: HookChain | None = None) -> Policy:
    """Register the checks (before every other gate) and the response headers on `app` (or on
    `hooks`, which runs them as one hook of each kind)."""
    policy = Policy.from_settings(settings)
    target: Flask | HookChain = hooks if hooks is not None else app
    target.before_request(_guard(app, policy))
    target.after_request(_headers(policy))
    return policy


def _guard(app: Flask, policy: Policy) -> Callable[[], Response | None]:
    own_routes: dict[str, bool] = {}
    # Verdicts per Host and per (Origin, Host), bounded: both headers are the client's to choose.
    host_allowed = lru_cache(maxsize=256)(policy.host_allowed)

    @lru_cache(maxsize=256)
    def origin_verdict(origin: str, host: str | None) -> str:
        if policy.is_own(origin, host):
            return _OWN
        return _ALLOWED if policy.is_cors_allowed(origin) else _FOREIGN

    def is_own_route(endpoint: str) -> bool:
        """Whether flaskserve defines the route (an application's own routes take what they
        like); cached per endpoint, as the view functions do not change once serving."""
        known = own_routes.get(endpoint)
        if known is None:
            view = app.view_functions.get(endpoint)
            module = getattr(view, "__module__", "") or ""
            known = own_routes[endpoint] = module.startswith("flaskserve.")
        return known

    def guard() -> Response | None:
        environ = request.environ
        host = environ.get("HTTP_HOST")
        if host is not None and policy.hosts is not None and not host_allowed(host):
            raise _misdirected(policy, host)
        method = environ["REQUEST_METHOD"]
        origin = environ.get("HTTP_ORIGIN")
        if origin is not None:
            verdict = origin_verdict(origin, host)
            if verdict == _FOREIGN:
                raise Forbidden(
                    f"requests from pages on {origin} are not accepted; the operator can allow "
                    "that origin with --cors-origins"
                )
            if verdict == _ALLOWED:
                state_of(environ).cors_origin = origin
                if method == "OPTIONS" and "HTTP_ACCESS_CONTROL_REQUEST_METHOD" in environ:
                    return _preflight()
        if method not in _SAFE_METHODS:
            mimetype = environ.get("CONTENT_TYPE", "").partition(";")[0].strip().lower()
            if mimetype in SIMPLE_BODY_TYPES:
                endpoint = request.endpoint
                if endpoint and is_own_route(endpoint):
                    raise _unsupported_type(mimetype, endpoint)
        return None

    return guard


class MisdirectedHost(FlaskServeError):
    """A Host this server does not answer (a DNS-rebinding page, or a name not allow-listed)."""

    status_code = 421


class UnsupportedBodyType(FlaskServeError):
    """A body type an HTML form on any site can send without asking the server first."""

    status_code = 415


def _misdirected(policy: Policy, host: str) -> MisdirectedHost:
    if policy.hosts:
        names = ", ".join(sorted(n + (f":{p}" if p else "") for n, p in policy.hosts))
        answered = f"the names in --allowed-hosts ({names}) and loopback ones"
    else:
        answered = "loopback names (localhost, 127.0.0.1, [::1]) as it is bound to " + policy.bound
    return MisdirectedHost(
        f"this server answers only requests for {answered}, not Host {host!r}; "
        "the operator can add the name with --allowed-hosts"
    )


def _unsupported_type(mimetype: str, endpoint: str) -> UnsupportedBodyType:
    accepted = "application/json or application/octet-stream (the binary tensor extension)"
    if endpoint == "sagemaker.invocations":
        accepted = "application/json, text/csv or application/octet-stream"
    return UnsupportedBodyType(
        f"Content-Type {mimetype} is not accepted (HTML forms on any site can send it); "
        f"send {accepted}"
    )


def _preflight() -> Response:
    response = Response(status=204)
    response.headers["Access-Control-Allow-Methods"] = ALLOW_METHODS
    response.headers["Access-Control-Allow-Headers"] = ALLOW_HEADERS
    response.headers["Access-Control-Max-Age"] = MAX_AGE
    return response


def _headers(policy: Policy) -> Callable[[Response], Response]:
    def add(response: Response) -> Response:
        headers = response.headers
        headers["X-Content-Type-Options"] = "nosniff"
        if headers.get("Content-Type", "").startswith("text/html"):
            headers["Content-Security-Policy"] = CONTENT_SECURITY_POLICY
            headers["X-Frame-Options"] = "DENY"
        if policy.cors:
            vary = headers.get("Vary")
            if not vary:
                headers["Vary"] = "Origin"
            elif "origin" not in vary.lower():
                headers["Vary"] = vary + ", Origin"
            origin = current().cors_origin
            if origin is not None:
                headers["Access-Control-Allow-Origin"] = origin
                headers["Access-Control-Expose-Headers"] = EXPOSE_HEADERS
        return response

    return add
