"""The gate: the one implementation of keys, model scoping, admin-only routes, rate limits, token
quotas, admission and usage metering, called by every transport.

A transport (HTTP's Flask hooks in `gate.http_hooks`, gRPC's `gate.grpc_guard`) translates what
it knows of a request into a `Knock` (the key presented, the access the endpoint needs, the model
it is about, whether it runs a model) and asks `Gate.check`; the refusal comes back raised as a
`FlaskServeError` (401 with `WWW-Authenticate`, 403, 429 with `Retry-After`), which the transport
maps to its wire format and nothing else. Admission (`Gate.admission`, 503 when overloaded)
and metering (`Gate.record`, once the answer was sent) are the gate's too, so a key, its rate,
its quota and its usage are one across every protocol, and a security fix lands in one place.

Order of checks, cheapest refusal first (none reads a body, and the model is read only once the
key is valid: OpenAI's routes parse the body to learn it):

1. no key, or an unknown or revoked one: 401;
2. an admin route and a key that is not an admin key, or a model route and a key not allowed on
   the model: 403;
3. an inference over the key's rate: 429 + `Retry-After`;
4. a generation by a key whose token quota (`tokens` in the keys file) is spent: 429.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from flaskserve.core.context import InferenceContext
from flaskserve.core.errors import Forbidden, RateLimited, Unauthorized
from flaskserve.core.repository import ModelRepository
from flaskserve.core.stream_limits import NO_LIMITS, StreamLimits
from flaskserve.gate import metering, policy
from flaskserve.gate.admission import Admission
from flaskserve.gate.keys import ApiKey, KeyStore
from flaskserve.gate.limits import LocalBuckets, SharedBuckets
from flaskserve.observability import metrics, tallies
from flaskserve.protocol.route_policy import Access

#: Retry-After (seconds) of a spent token quota: it does not refill by itself.
QUOTA_RETRY_AFTER = 3600
INVALID_KEY = "the API key is not valid (unknown or revoked); ask the operator for a key"
INVALID_KEY_CHALLENGE = 'Bearer realm="flaskserve", error="invalid_token"'


def _no_model() -> str | None:
    return None


@dataclass(frozen=True)
class Knock:
    """What a transport knows of a request when it asks the gate."""

    #: The key the client presented (`policy.key_from`), None when it sent none.
    presented: str | None
    #: What the endpoint needs: `policy.OPEN`, `policy.KEY`, `policy.MODEL` or `policy.ADMIN`.
    access: Access
    #: The endpoint as the client named it (a path, an RPC), for the admin refusal's message.
    target: str
    #: How a client of this transport sends a key, for the 401's message.
    how_to_send: str
    #: The model the request is about; called only for a model route, once the key is valid.
    model: Callable[[], str | None] = _no_model
    #: Runs a model: the key's rate limit applies.
    inference: bool = False
    #: Runs a generation: the key's token quota applies too.
    generates: bool = False


@dataclass
class Gate:
    """The keys, buckets, meter and admission slots of one app, shared by its transports."""

    keys: KeyStore | None
    meter: metering.Meter | None
    buckets: LocalBuckets | SharedBuckets
    admission: Admission
    repository: ModelRepository
    #: What one stream may send and for how long (`--max-stream-bytes`, `--max-stream-seconds`;
    #: HTTP: `gate.streams`, gRPC: `GuardedCall.stream_limits`).
    streams: StreamLimits = NO_LIMITS

    @property
    def metered(self) -> bool:
        """Whether usage is recorded at all: with keys (counters) or a usage database."""
        return self.meter is not None or self.keys is not None

    def close(self) -> None:
        """Close the usage database and the buckets shared with the other workers."""
        if self.meter is not None:
            self.meter.close()
        if isinstance(self.buckets, SharedBuckets):
            self.buckets.close()

    def admits_body(self, presented: str | None) -> bool:
        """Whether a request presenting `presented` may have its body read: not when keys are
        on and the key is missing or unknown, since it is refused (401) before any body."""
        if self.keys is None:
            return True
        return presented is not None and self.keys.authenticate(presented) is not None

    def check(self, knock: Knock, context: InferenceContext | None = None) -> ApiKey | None:
        """`identify`, then `permit`: the key of the request `knock` describes, or raise its
        refusal."""
        key = self.identify(knock, context)
        self.permit(knock, key)
        return key

    def identify(self, knock: Knock, context: InferenceContext | None = None) -> ApiKey | None:
        """The key of the request `knock` describes (None when keys are off or the endpoint is
        open), or raise 401. The key's id is left in `context` for metering."""
        if self.keys is None or knock.access == policy.OPEN:
            return None
        if knock.presented is None:
            raise Unauthorized(f"this server needs an API key: {knock.how_to_send}")
        key = self.keys.authenticate(knock.presented)
        if key is None:
            raise Unauthorized(INVALID_KEY, INVALID_KEY_CHALLENGE)
        if context is not None:
            context.key_id = key.id
        return key

    def permit(self, knock: Knock, key: ApiKey | None) -> None:
        """Raise the refusal (403, 429) of the request `knock` describes, made with `key` (as
        `identify` found it; None: keys are off or the endpoint is open, nothing to check)."""
        if key is None:
            return
        if knock.access == policy.ADMIN and not key.admin:
            raise Forbidden(f"API key {key.id!r} is not an admin key; {knock.target} needs one")
        if knock.access == policy.MODEL:
            model = knock.model()
            if not key.allows(model):
                raise Forbidden(policy.not_allowed(key, model))
        if knock.inference and key.rate > 0:
            retry_after = self.buckets.take(key.id, key.rate, key.bucket_size)
            if retry_after:
                raise RateLimited(
                    f"API key {key.id!r} is limited to {key.rate:g} requests/s; retry after "
                    f"{retry_after}s",
                    retry_after,
                )
        if knock.generates and key.tokens and self.meter is not None:
            used = self.meter.tokens_used(key.id)
            if used >= key.tokens:
                raise RateLimited(
                    f"API key {key.id!r} has used {used} of its {key.tokens} tokens; ask the "
                    "operator for a larger quota",
                    QUOTA_RETRY_AFTER,
                )

    def served(self) -> list[str]:
        """The names of the models served now."""
        return [entry.name for entry in self.repository.entries()]

    def billable(self, context: InferenceContext | None) -> bool:
        """Whether an inference with `context` is metered: not when keys are on and it was
        refused before its key was read."""
        if not self.metered:
            return False
        return self.keys is None or (context is not None and context.key_id is not None)

    def record(
        self,
        context: InferenceContext | None,
        named: str | None,
        status: int,
        bytes_in: int,
        bytes_out: int,
    ) -> None:
        """Meter one inference that ended with `status` (an HTTP status, whatever the transport)
        in the usage database and the per-key counters: against the model that served it, else
        the model the request named (`named`), else "(unknown)"; with the rows, seconds and
        tokens the data plane left in `context`. Nothing when it is not `billable`."""
        if not self.billable(context):
            return
        key_id = context.key_id if context is not None else None
        key_id = key_id or metering.ANONYMOUS
        if context is not None and context.served is not None:
            model, items, compute = context.served.name, context.rows, context.compute
        else:  # refused before (or by) the data plane: metered against the model named
            model, items = named or "", 0
            compute = context.compute if context is not None else 0.0
        if model not in self.served():
            model = metrics.UNKNOWN_MODEL
        tokens = (
            (context.prompt_tokens, context.completion_tokens) if context is not None else (0, 0)
        )
        if self.meter is not None:
            self.meter.record(
                key_id,
                model,
                status >= 400,
                items,
                bytes_in,
                bytes_out,
                round(compute * 1e6),
                *tokens,
            )
        if self.keys is not None:
            tallies.key_used(key_id, model, status, items, bytes_in, bytes_out, compute, *tokens)
