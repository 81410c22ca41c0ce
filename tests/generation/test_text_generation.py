"""The transformers text-generation runtime, in process: streaming, sampling parameters, stop
strings, cancellation, and Python models that stream."""

from __future__ import annotations

import contextvars
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from flaskserve.core import wakeup
from flaskserve.core.config import config_from_mapping, read_model_config
from flaskserve.core.errors import InvalidInput
from flaskserve.core.generation import collect, until_stop
from flaskserve.core.model import GenerationRequest, Model, TextEvent
from flaskserve.runtimes.registry import load_model
from waiting import eventually


@pytest.fixture(scope="module")
def tiny(tiny_repo: Path) -> Iterator[Model]:
    model = load_model(read_model_config(tiny_repo / "tiny"), "1", tiny_repo / "tiny" / "1")
    yield model
    model.unload()


def test_a_generation_streams_events_with_counts_and_a_finish_reason(tiny: Model) -> None:
    events = list(tiny.generate(GenerationRequest(prompt="The quick brown", max_tokens=12)))
    assert events[0].completion_tokens == 0 and events[0].prompt_tokens > 0
    counts = [event.completion_tokens for event in events]
    assert counts == sorted(counts) and len(events) > 2
    assert events[-1].finish_reason in ("stop", "length")
    assert all(event.finish_reason is None for event in events[:-1])
    assert events[-1].completion_tokens <= 12
    if events[-1].finish_reason == "length":
        assert events[-1].completion_tokens == 12


def test_max_tokens_is_capped_by_the_model_limit(tiny: Model) -> None:
    _, last = collect(tiny.generate(GenerationRequest(prompt="fox", max_tokens=10_000)))
    assert last.completion_tokens <= 48  # max_tokens in model.toml


def test_greedy_generation_is_deterministic(tiny: Model) -> None:
    request = GenerationRequest(prompt="The lazy dog", max_tokens=16, temperature=0)
    assert collect(tiny.generate(request))[0] == collect(tiny.generate(request))[0]


def test_the_same_seed_gives_the_same_text(tiny: Model) -> None:
    first = GenerationRequest(prompt="The lazy dog", max_tokens=16, temperature=1.0, seed=7)
    texts = {collect(tiny.generate(first))[0] for _ in range(2)}
    assert len(texts) == 1
    others = {
        collect(tiny.generate(GenerationRequest(prompt="The lazy dog", max_tokens=16, seed=s)))[0]
        for s in range(8, 12)
    }
    assert len(others | texts) > 1


class CountingWaker:
    """A driver's waker: counts the times a stream armed it and was woken."""

    def __init__(self) -> None:
        self.armed = 0
        self.woken = threading.Event()

    def arm(self) -> Callable[[], None]:
        self.armed += 1
        self.woken.clear()
        return self.woken.set


def test_a_stream_with_a_waker_waits_for_tokens_without_blocking(tiny: Model) -> None:
    request = GenerationRequest(prompt="The lazy dog", max_tokens=16, temperature=0)
    blocking = collect(tiny.generate(request))[0]
    waker = CountingWaker()

    def read() -> list[TextEvent]:
        wakeup.install(waker)
        events, stream = [], tiny.generate(request)
        for event in stream:
            if event is wakeup.NOTHING_YET:
                assert waker.woken.wait(30), "the waker was never fired"
                continue
            events.append(event)
        return events

    events = contextvars.copy_context().run(read)
    assert waker.armed > 0  # it waited on the waker, not in a blocking get
    assert "".join(event.text for event in events) == blocking
    assert events[-1].finish_reason is not None


def test_without_transformers_handler_table_a_router_thread_feeds_the_streams(
    tiny: Model, tiny_repo: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from types import MappingProxyType

    from transformers.generation.continuous_batching import continuous_api

    made = continuous_api.OutputRouter.__init__

    def without_table(router: Any) -> None:  # a transformers whose router has no handlers
        made(router)
        router.result_handlers = MappingProxyType({})

    monkeypatch.setattr(continuous_api.OutputRouter, "__init__", without_table)
    routed = load_model(read_model_config(tiny_repo / "tiny"), "1", tiny_repo / "tiny" / "1")
    try:
        assert any(t.name == "flaskserve-generate" for t in threading.enumerate())
        request = GenerationRequest(prompt="The lazy dog", max_tokens=16, temperature=0)
        assert collect(routed.generate(request))[0] == collect(tiny.generate(request))[0]
    finally:
        routed.unload()


def test_streamed_pieces_join_to_the_whole_text_across_multibyte_characters(
    tiny_lm: Path,
) -> None:
    from transformers import AutoTokenizer

    from flaskserve.runtimes.text_generation import _Decoder

    tokenizer = AutoTokenizer.from_pretrained(str(tiny_lm))
    text = "Caf\u00e9 cr\u00e8me, na\u00efve r\u00e9sum\u00e9 \U0001f600 \U0001f600 done"
    ids = tokenizer(text)["input_ids"]
    decoder = _Decoder(tokenizer, [tokenizer.eos_token_id])
    pieces = [decoder.feed(ids[:n]) for n in range(1, len(ids) + 1)] + [decoder.rest()]
    assert not any("\ufffd" in piece for piece in pieces)  # no half character ever sent
    assert "".join(pieces) == tokenizer.decode(ids, skip_special_tokens=True)


def test_concurrent_generations_all_finish(tiny: Model) -> None:
    results: list[TextEvent] = []

    def run(i: int) -> None:
        request = GenerationRequest(prompt=f"fox {i}", max_tokens=8)
        results.append(collect(tiny.generate(request))[1])

    threads = [threading.Thread(target=run, args=(i,)) for i in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert len(results) == 6 and all(r.finish_reason for r in results)


def test_closing_a_stream_cancels_its_generation(tiny: Model) -> None:
    stream = tiny.generate(GenerationRequest(prompt="The quick", max_tokens=48))
    next(stream)
    next(stream)
    stream.close()
    # The stream's queue is gone from the router, and the batch holds no request for it.
    manager_free = _engine(tiny)
    eventually(lambda: not manager_free._streams, timeout=10, message="the stream was forgotten")
    eventually(
        lambda: not manager_free.manager.batch_processor
        or not manager_free.manager.batch_processor.scheduler.active_requests,
        timeout=10,
        message="the cancelled request left the batch",
    )


def test_a_chat_uses_the_models_template(tiny: Model) -> None:
    messages = ({"role": "user", "content": "hello"},)
    first = next(tiny.generate(GenerationRequest(messages=messages, max_tokens=4)))
    plain = next(tiny.generate(GenerationRequest(prompt="hello", max_tokens=4)))
    assert first.prompt_tokens > plain.prompt_tokens  # "user: hello\nassistant:"


def test_a_prompt_longer_than_the_context_is_refused_before_streaming(tiny: Model) -> None:
    with pytest.raises(InvalidInput, match="context"):
        tiny.generate(GenerationRequest(prompt="fox jumps " * 400))


def test_v2_infer_answers_with_the_whole_text(tiny: Model) -> None:
    outputs = tiny.predict({"text_input": np.array([b"The quick"], dtype=object)})
    assert outputs["text_output"].shape == (1,)
    assert isinstance(outputs["text_output"][0], bytes)


def test_stop_strings_cut_the_text_across_events() -> None:
    def pieces() -> Iterator[TextEvent]:
        for i, text in enumerate(["Hello wo", "rld. EN", "D here", " more"]):
            yield TextEvent(text, 3, i + 1)
        yield TextEvent("", 3, 5, "length")

    events = list(until_stop(pieces(), ["END"]))
    assert "".join(e.text for e in events) == "Hello world. "
    assert events[-1].finish_reason == "stop"


def test_stop_strings_pass_a_waiting_stream_on_untouched() -> None:
    def pieces() -> Iterator[TextEvent]:
        yield TextEvent("Hello E", 3, 1)
        yield wakeup.NOTHING_YET
        yield TextEvent("ND there", 3, 2)

    events = list(until_stop(pieces(), ["END"]))
    assert wakeup.NOTHING_YET in events
    assert "".join(e.text for e in events) == "Hello "
    assert events[-1].finish_reason == "stop"


def test_a_python_model_whose_predict_yields_streams(tmp_path: Path) -> None:
    folder = tmp_path / "chatty"
    (folder / "1").mkdir(parents=True)
    (folder / "1" / "chatty.py").write_text(
        "class Chatty:\n"
        "    closed = False\n"
        "    def predict(self, text_input):\n"
        "        try:\n"
        "            for word in text_input.split():\n"
        "                yield word.upper() + ' '\n"
        "        finally:\n"
        "            Chatty.closed = True\n",
        encoding="utf-8",
    )
    config = config_from_mapping({"runtime": "python", "entrypoint": "chatty:Chatty"}, "chatty")
    model = load_model(config, "1", folder / "1")
    assert model.generative
    text, last = collect(model.generate(GenerationRequest(prompt="one two three")))
    assert text == "ONE TWO THREE " and last.completion_tokens == 3
    _, cut = collect(model.generate(GenerationRequest(prompt="a b c d e", max_tokens=2)))
    assert cut.finish_reason == "length" and cut.completion_tokens == 2
    stream = model.generate(GenerationRequest(prompt="a b c d e"))
    next(stream)
    next(stream)
    stream.close()
    module = __import__("sys").modules["flaskserve_models.chatty.v1.chatty"]
    assert module.Chatty.closed


def _engine(model: Model):  # type: ignore[no-untyped-def]
    """The runtime's Engine behind a model (reached through the bound method it wraps)."""
    for cell in model.generate_fn.__closure__ or ():
        inner = cell.cell_contents
        owner = getattr(inner, "__self__", None)
        if owner is not None and hasattr(owner, "manager"):
            return owner
    raise AssertionError("no engine found")
