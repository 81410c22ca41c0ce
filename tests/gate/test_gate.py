"""The gate on its own, without a server: each refusal and each accounting path that every
transport (HTTP's hooks, gRPC's guard) gets by calling it."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from flaskserve.core.context import InferenceContext
from flaskserve.core.errors import Forbidden, Overloaded, RateLimited, Unauthorized
from flaskserve.gate import metering, policy
from flaskserve.gate.admission import Admission, Ticket
from flaskserve.gate.gate import QUOTA_RETRY_AFTER, Gate, Knock
from flaskserve.gate.keys import KeyStore, add_key
from flaskserve.gate.limits import LocalBuckets
from flaskserve.observability import metrics

SERVED = ("digits", "minilm")


@dataclass
class Entry:
    name: str


class Repository:
    def entries(self) -> list[Entry]:
        return [Entry(name) for name in SERVED]


@dataclass
class RecordingMeter:
    """Stands in for `metering.Meter`: keeps what it was given, reports a fixed token use."""

    used: int = 0
    rows: list[tuple[Any, ...]] = field(default_factory=list)
    closed: bool = False

    def record(self, *row: Any) -> None:
        self.rows.append(row)

    def tokens_used(self, key_id: str) -> int:
        return self.used

    def close(self) -> None:
        self.closed = True


@dataclass
class Keys:
    path: Path
    alice: str  # may use digits only, 1 request/s, 10 tokens
    ops: str  # admin


@pytest.fixture
def keys(tmp_path: Path) -> Keys:
    path = tmp_path / "keys.toml"
    alice = add_key(path, "alice", models=("digits",), rate=1, burst=1, tokens=10)
    ops = add_key(path, "ops", admin=True)
    return Keys(path, alice, ops)


Counted = Callable[[], dict[tuple[str, ...], float]]


def key_samples() -> dict[tuple[str, ...], float]:
    """The per-key samples of this process's `/metrics`: (name, label values...) -> value."""
    text = metrics.exposition()[0].decode()
    return {
        (sample.name, *sample.labels.values()): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
        if sample.name.startswith("flaskserve_key_")
    }


@pytest.fixture
def counted() -> Counted:
    """What the per-key counters on `/metrics` gained since the test began."""
    before = key_samples()

    def gained() -> dict[tuple[str, ...], float]:
        after = key_samples()
        return {
            sample: value - before.get(sample, 0.0)
            for sample, value in after.items()
            if value != before.get(sample, 0.0)
        }

    return gained


def make_gate(keys: Keys | None, meter: RecordingMeter | None = None, slots: int = 4) -> Gate:
    return Gate(
        keys=KeyStore(keys.path) if keys is not None else None,
        meter=meter,  # type: ignore[arg-type]
        buckets=LocalBuckets(),
        admission=Admission(slots, 0.01),
        repository=Repository(),  # type: ignore[arg-type]
    )


def knock(
    presented: str | None, access: str = policy.MODEL, model: str | None = "digits", **kw: Any
) -> Knock:
    return Knock(presented, access, "/v2/x", "send a key like so", model=lambda: model, **kw)


def test_without_keys_every_request_passes_and_leaves_no_key_id() -> None:
    gate = make_gate(None)
    context = InferenceContext("rest")
    for access in (policy.OPEN, policy.KEY, policy.MODEL, policy.ADMIN):
        assert gate.check(knock(None, access, inference=True), context) is None
    assert context.key_id is None
    assert gate.admits_body(None)


def test_an_open_endpoint_needs_no_key(keys: Keys) -> None:
    assert make_gate(keys).check(knock(None, policy.OPEN)) is None


def test_no_key_is_refused_401_with_the_transports_advice_before_the_model_is_read(
    keys: Keys,
) -> None:
    def model() -> str:
        raise AssertionError("the model was read before the key was checked")

    refused = Knock(None, policy.MODEL, "/v2/x", "send a key like so", model=model)
    with pytest.raises(Unauthorized) as caught:
        make_gate(keys).check(refused)
    assert caught.value.status_code == 401
    assert "send a key like so" in str(caught.value)
    assert caught.value.headers["WWW-Authenticate"] == 'Bearer realm="flaskserve"'


def test_an_unknown_key_is_refused_401_as_an_invalid_token(keys: Keys) -> None:
    gate = make_gate(keys)
    with pytest.raises(Unauthorized) as caught:
        gate.check(knock(keys.alice + "x"))
    assert "invalid_token" in caught.value.headers["WWW-Authenticate"]
    assert not gate.admits_body(keys.alice + "x") and not gate.admits_body(None)
    assert gate.admits_body(keys.alice)


def test_a_key_for_another_model_is_refused_403_naming_the_models_it_may_use(
    keys: Keys,
) -> None:
    context = InferenceContext("grpc")
    with pytest.raises(Forbidden) as caught:
        make_gate(keys).check(knock(keys.alice, model="minilm"), context)
    assert caught.value.status_code == 403
    assert "may not use model 'minilm'" in str(caught.value) and "digits" in str(caught.value)
    assert context.key_id == "alice"  # identified, then refused: the access line names it


def test_an_admin_route_refuses_a_plain_key_and_admits_an_admin_key(keys: Keys) -> None:
    gate = make_gate(keys)
    with pytest.raises(Forbidden) as caught:
        gate.check(knock(keys.alice, policy.ADMIN))
    assert "not an admin key; /v2/x needs one" in str(caught.value)
    assert gate.check(knock(keys.ops, policy.ADMIN)).id == "ops"  # type: ignore[union-attr]


def test_a_key_route_admits_any_valid_key(keys: Keys) -> None:
    key = make_gate(keys).check(knock(keys.alice, policy.KEY, model="minilm"))
    assert key is not None and key.id == "alice"


def test_inference_over_the_keys_rate_is_refused_429_with_retry_after(keys: Keys) -> None:
    gate = make_gate(keys)
    gate.check(knock(keys.alice, inference=True))
    with pytest.raises(RateLimited) as caught:
        gate.check(knock(keys.alice, inference=True))
    assert caught.value.status_code == 429
    assert int(caught.value.headers["Retry-After"]) >= 1
    gate.check(knock(keys.alice))  # metadata, not inference: not rate limited


def test_a_generation_by_a_key_with_its_token_quota_spent_is_refused_429(keys: Keys) -> None:
    meter = RecordingMeter(used=10)
    gate = make_gate(keys, meter)
    with pytest.raises(RateLimited) as caught:
        gate.check(knock(keys.alice, generates=True))
    assert caught.value.retry_after == QUOTA_RETRY_AFTER
    assert "has used 10 of its 10 tokens" in str(caught.value)
    gate.check(knock(keys.alice))  # not a generation: no quota
    meter.used = 9
    gate.check(knock(keys.alice, generates=True))


def test_admission_refuses_503_when_every_slot_stays_taken(keys: Keys) -> None:
    gate = make_gate(keys, slots=1)
    first = Ticket()
    gate.admission.enter(first)
    with pytest.raises(Overloaded) as caught:
        gate.admission.enter(Ticket())
    assert caught.value.status_code == 503
    gate.admission.leave(first)
    gate.admission.enter(Ticket())


def test_a_served_inference_is_metered_and_counted_with_the_data_planes_usage(
    keys: Keys, counted: Counted
) -> None:
    meter = RecordingMeter()
    gate = make_gate(keys, meter)
    context = InferenceContext("rest", key_id="alice", served=Entry("digits"), rows=3)  # type: ignore[arg-type]
    context.compute, context.prompt_tokens, context.completion_tokens = 0.25, 5, 7
    gate.record(context, "ignored", 200, 100, 40)
    assert meter.rows == [("alice", "digits", False, 3, 100, 40, 250000, 5, 7)]
    # approx: compute seconds are a float sum, minus what earlier tests of this process left
    assert counted() == pytest.approx({
        ("flaskserve_key_requests_total", "alice", "digits", "200"): 1,
        ("flaskserve_key_inference_items_total", "alice", "digits"): 3,
        ("flaskserve_key_received_bytes_total", "alice", "digits"): 100,
        ("flaskserve_key_sent_bytes_total", "alice", "digits"): 40,
        ("flaskserve_key_compute_seconds_total", "alice", "digits"): 0.25,
        ("flaskserve_key_tokens_total", "alice", "prompt", "digits"): 5,
        ("flaskserve_key_tokens_total", "alice", "completion", "digits"): 7,
    })


def test_a_refused_inference_is_metered_against_the_model_named_else_unknown(
    keys: Keys, counted: Counted
) -> None:
    meter = RecordingMeter()
    gate = make_gate(keys, meter)
    gate.record(InferenceContext("rest", key_id="alice"), "digits", 429, 10, 0)
    gate.record(InferenceContext("rest", key_id="alice"), "nope", 404, 10, 0)
    assert [row[:4] for row in meter.rows] == [
        ("alice", "digits", True, 0),
        ("alice", "(unknown)", True, 0),
    ]
    assert {
        sample: value for sample, value in counted().items() if "requests" in sample[0]
    } == {
        ("flaskserve_key_requests_total", "alice", "digits", "429"): 1,
        ("flaskserve_key_requests_total", "alice", "(unknown)", "404"): 1,
    }


def test_a_request_refused_before_its_key_was_read_is_not_billed(
    keys: Keys, counted: Counted
) -> None:
    meter = RecordingMeter()
    gate = make_gate(keys, meter)
    assert not gate.billable(InferenceContext("rest")) and not gate.billable(None)
    gate.record(InferenceContext("rest"), "digits", 401, 10, 0)
    gate.record(None, "digits", 401, 10, 0)
    assert meter.rows == [] and counted() == {}


def test_without_keys_usage_is_metered_as_anonymous_and_no_key_counters(
    counted: Counted,
) -> None:
    meter = RecordingMeter()
    gate = make_gate(None, meter)
    gate.record(None, "minilm", 200, 8, 2)
    assert meter.rows == [(metering.ANONYMOUS, "minilm", False, 0, 8, 2, 0, 0, 0)]
    assert counted() == {}


def test_without_keys_or_meter_nothing_is_recorded(counted: Counted) -> None:
    gate = make_gate(None)
    assert not gate.metered and not gate.billable(InferenceContext("rest", key_id="x"))
    gate.record(InferenceContext("rest", key_id="x"), "digits", 200, 1, 1)
    assert counted() == {}


def test_closing_the_gate_closes_its_meter(keys: Keys) -> None:
    meter = RecordingMeter()
    make_gate(keys, meter).close()
    assert meter.closed
