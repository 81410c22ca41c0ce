"""Hugging Face causal language models (extra `nlp`): a prompt in, text streamed out.

A version folder holds what `save_pretrained` writes for the model and its tokenizer
(`config.json`, `*.safetensors`, `tokenizer.json`/`tokenizer_config.json`,
`generation_config.json`, `chat_template.jinja` if the model chats):

    # models/tiny/model.toml
    runtime = "transformers"
    device = "cpu"          # "cuda" or "auto"
    max_tokens = 256        # the most tokens one request may ask for (requests asking more get it)
    max_batch_tokens = 256  # tokens one decode step may carry (continuous batching)
    num_blocks = 64         # KV cache: blocks of `page_size` tokens, shared by all generations
    page_size = 64
    threads = 2             # torch.set_num_threads

Concurrent generations share decode steps through transformers' own continuous batching
(`ContinuousBatchingManager`): one background thread runs the batch; each generation is a request
in it, added with its sampling parameters (`temperature`, `top_p` are per request) and cancelled
when its stream is closed, which frees its place at once. The cache size is set here, not left to
transformers: on a CPU it would otherwise size the KV cache from the free memory (measured: 16 s
and gigabytes before the first token of a tiny model).

`seed`: the batch samples from one random generator shared by every generation in it, so a
seeded request (with temperature > 0) runs on its own, one at a time, on a small decode loop with
its own `torch.Generator`: the same seed gives the same text. `temperature` 0 is greedy.
"""

from __future__ import annotations

import itertools
import logging
import queue
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from flaskserve.core import wakeup
from flaskserve.core.config import ModelConfig
from flaskserve.core.errors import InvalidInput, ModelLoadError
from flaskserve.core.generation import generative_model
from flaskserve.core.model import GenerationRequest, Model, TextEvent, TextStream
from flaskserve.core.wakeup import NOTHING_YET
from flaskserve.runtimes.context import DEFAULT_OPTIONS, RuntimeOptions
from flaskserve.runtimes.files import detail
from flaskserve.runtimes.options import device_option, int_option
from flaskserve.runtimes.sentence_transformers import go_offline

log = logging.getLogger("flaskserve.runtimes.text_generation")

DEFAULT_MAX_TOKENS = 256
#: The temperature and top-p the batch's processors are built with (transformers builds a
#: per-request processor only for a setting whose default is not neutral); every request then
#: passes its own values.
_BUILD_TEMPERATURE = 0.7
_BUILD_TOP_P = 0.95
#: Greedy decoding inside a sampling batch: keep only the most likely token.
_GREEDY_TOP_P = 1e-9
#: No output waiting, and the stream's waker armed (`_Outputs.latest`).
_NOTHING = object()


def load(
    config: ModelConfig, version: str, path: Path, options: RuntimeOptions = DEFAULT_OPTIONS
) -> Model:
    go_offline()
    try:
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer
    except ImportError as exc:
        raise ModelLoadError(
            f"the transformers runtime needs torch and transformers ({exc.name} missing); "
            "pip install 'flaskserve[nlp]'"
        ) from None
    from flaskserve.runtimes.torch import resolve_device

    folder = path
    if config.option("path") is not None:
        folder = ((config.path or path) / str(config.option("path"))).resolve()
    if not any(folder.glob("*.safetensors")):
        raise ModelLoadError(
            f"no *.safetensors weights in {folder}; save the model there with save_pretrained"
        )
    threads = int_option(config, "threads", minimum=1) or options.threads
    if threads:
        torch.set_num_threads(threads)
    device = resolve_device(device_option(config))
    try:
        tokenizer = AutoTokenizer.from_pretrained(str(folder), local_files_only=True)
        lm = AutoModelForCausalLM.from_pretrained(str(folder), local_files_only=True)
    except Exception as exc:
        raise ModelLoadError(f"transformers could not load {folder} ({detail(exc)})") from None
    lm = lm.to(device).eval()  # type: ignore[arg-type]
    engine = Engine(lm, tokenizer, config)
    return generative_model(
        config.name,
        version,
        engine.generate,
        "transformers",
        parameters={"source": str(folder), "max_tokens": engine.max_tokens},
        unload_fn=engine.close,
        count_tokens=engine.count_tokens,
    )


class Engine:
    """One model's continuous batch: requests in, their tokens routed back to each stream."""

    def __init__(self, lm: Any, tokenizer: Any, config: ModelConfig) -> None:
        from transformers import GenerationConfig
        from transformers.generation.configuration_utils import ContinuousBatchingConfig

        self.lm = lm
        self.tokenizer = tokenizer
        self.eos = _eos_ids(lm, tokenizer)
        context = int(getattr(lm.config, "max_position_embeddings", 0) or 0)
        self.context_length = context or 2048
        self.max_tokens = int_option(config, "max_tokens", minimum=1) or DEFAULT_MAX_TOKENS
        self.chat_template = getattr(tokenizer, "chat_template", None)
        generation = GenerationConfig(  # type: ignore[no-untyped-call]
            do_sample=True,
            temperature=_BUILD_TEMPERATURE,
            top_p=_BUILD_TOP_P,
            max_new_tokens=self.max_tokens,
            eos_token_id=self.eos,
            pad_token_id=tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0,
        )
        batching = ContinuousBatchingConfig(
            per_request_processors=True,
            num_blocks=int_option(config, "num_blocks", minimum=1) or 64,
            page_size=int_option(config, "page_size", minimum=1) or 64,
            max_batch_tokens=int_option(config, "max_batch_tokens", minimum=1) or 256,
        )
        self.manager = lm.init_continuous_batching(
            generation_config=generation, continuous_batching_config=batching
        )
        # Started from a daemon thread, so its loop thread is one too (threads inherit it): a
        # worker that is stopping must not wait on a batch loop that never ends by itself.
        starter = threading.Thread(target=self.manager.start, daemon=True)
        starter.start()
        starter.join()
        self._streams: dict[str, _Outputs] = {}
        self._lock = threading.Lock()
        self._ids = itertools.count()
        self._seeded = threading.Lock()
        self._closed = threading.Event()
        # Each output is put on its stream from the batch thread itself, through the handlers
        # table behind transformers' `register_result_handler` (which would want an asyncio
        # loop to post to): no thread between the batch and the stream. A transformers without
        # that table gets one router thread reading the shared output queue instead.
        router = getattr(self.manager, "output_router", None)
        handlers = getattr(router, "result_handlers", None)
        self._handlers: dict[str, Any] | None = handlers if isinstance(handlers, dict) else None
        #: Where transformers puts the outputs of a request without a handler: those a
        #: cancelled generation made after its stream was forgotten (dropped at each `_forget`).
        self._spilled: queue.Queue[Any] | None = getattr(router, "output_queue", None)
        if self._handlers is None or self._spilled is None:
            self._handlers = None
            threading.Thread(target=self._route, name="flaskserve-generate", daemon=True).start()

    # -- the request side ---------------------------------------------------------------------

    def generate(self, request: GenerationRequest) -> TextStream:
        """Check the request and start its generation (refusals raise here, before any
        stream); the stream it returns cancels the generation when closed."""
        prompt_ids = self._prompt_ids(request)
        room = self.context_length - len(prompt_ids)
        if room < 1:
            raise InvalidInput(
                f"the prompt is {len(prompt_ids)} tokens; this model reads at most "
                f"{self.context_length - 1} (its context holds {self.context_length})"
            )
        wanted = request.max_tokens if request.max_tokens is not None else self.max_tokens
        if wanted < 1:
            raise InvalidInput("max_tokens must be at least 1")
        budget = min(wanted, self.max_tokens, room)
        if request.seed is not None and request.temperature > 0:
            return self._seeded_stream(prompt_ids, budget, request)
        return self._batched_stream(prompt_ids, budget, request)

    def count_tokens(self, texts: list[str]) -> int:
        return sum(len(self.tokenizer(text)["input_ids"]) for text in texts)

    def _prompt_ids(self, request: GenerationRequest) -> list[int]:
        if request.messages is not None:
            if not self.chat_template:
                from flaskserve.core.generation import prompt_of

                return list(self.tokenizer(prompt_of(request))["input_ids"])
            try:
                ids = self.tokenizer.apply_chat_template(
                    [dict(m) for m in request.messages],
                    add_generation_prompt=True,
                    tokenize=True,
                    return_dict=False,
                )
            except Exception as exc:
                raise InvalidInput(f"the chat template refused the messages: {exc}") from None
            return list(ids["input_ids"] if isinstance(ids, dict) else ids)
        ids = list(self.tokenizer(request.prompt or "")["input_ids"])
        if not ids:
            bos = self.tokenizer.bos_token_id
            ids = [bos if bos is not None else self.eos[0]]
        return ids

    def _batched_stream(
        self, prompt_ids: list[int], budget: int, request: GenerationRequest
    ) -> Iterator[TextEvent]:
        """The request joins the batch at the stream's first step (a stream closed before
        that never costs the batch anything) and leaves it when the stream is closed."""
        greedy = request.temperature <= 0
        sampling = {
            "temperature": 1.0 if greedy else float(request.temperature),
            "top_p": _GREEDY_TOP_P if greedy else float(request.top_p),
        }
        request_id = f"g{next(self._ids)}"
        outputs = _Outputs()
        with self._lock:
            self._streams[request_id] = outputs
        if self._handlers is not None:
            self._handlers[request_id] = (outputs.put, _INLINE)
        decoder = _Decoder(self.tokenizer, self.eos)
        finished = False
        try:
            added = self.manager.add_request(
                prompt_ids,
                request_id=request_id,
                max_new_tokens=budget,
                streaming=True,
                eos_token_id=self.eos,
                **sampling,
            )
            if added is None:
                finished = True
                raise RuntimeError("the generation engine is stopping")
            yield TextEvent("", len(prompt_ids), 0)
            while True:
                output = outputs.latest(wakeup.current())
                if output is _NOTHING:
                    yield NOTHING_YET
                    continue
                if output is None:
                    raise RuntimeError("the generation engine stopped")
                if output.error:
                    finished = True
                    raise RuntimeError(f"generation failed: {output.error}")
                tokens = list(output.generated_tokens)
                text = decoder.feed(tokens)
                if output.is_finished():
                    finished = True
                    stopped = bool(tokens) and tokens[-1] in self.eos
                    reason = "length" if not stopped and len(tokens) >= budget else "stop"
                    yield TextEvent(text + decoder.rest(), len(prompt_ids), len(tokens), reason)
                    return
                if text:
                    yield TextEvent(text, len(prompt_ids), len(tokens))
        finally:
            self._forget(request_id)
            if not finished:
                self.manager.cancel_request(request_id)

    def _forget(self, request_id: str) -> None:
        with self._lock:
            self._streams.pop(request_id, None)
        if self._handlers is not None and self._spilled is not None:
            self._handlers.pop(request_id, None)
            while True:
                try:
                    self._spilled.get_nowait()
                except queue.Empty:
                    break

    def _route(self) -> None:
        """The one reader of the batch's outputs: each goes to its stream's queue."""
        while not self._closed.is_set():
            output = self.manager.get_result(timeout=0.2)
            if output is None:
                continue
            with self._lock:
                target = self._streams.get(output.request_id)
            if target is not None:
                target.put(output)

    # -- seeded sampling, one at a time --------------------------------------------------------

    def _seeded_stream(
        self, prompt_ids: list[int], budget: int, request: GenerationRequest
    ) -> Iterator[TextEvent]:
        import torch

        decoder = _Decoder(self.tokenizer, self.eos)
        generator = torch.Generator(device=self.lm.device).manual_seed(int(request.seed or 0))
        made: list[int] = []
        yield TextEvent("", len(prompt_ids), 0)
        with self._seeded, torch.inference_mode():
            ids = torch.tensor([prompt_ids], device=self.lm.device)
            past = None
            while len(made) < budget:
                out = self.lm(input_ids=ids, cache=past, use_cache=True)
                past = out.cache
                token = _sample(out.logits[0, -1].float(), request, generator)
                made.append(token)
                if token in self.eos:
                    yield TextEvent(decoder.feed(made) + decoder.rest(), len(prompt_ids),
                                    len(made), "stop")
                    return
                text = decoder.feed(made)
                if len(made) < budget:
                    yield TextEvent(text, len(prompt_ids), len(made))
                else:
                    yield TextEvent(text + decoder.rest(), len(prompt_ids), len(made), "length")
                ids = torch.tensor([[token]], device=self.lm.device)

    def close(self) -> None:
        self._closed.set()
        with self._lock:
            waiting = list(self._streams.values())
        for outputs in waiting:
            outputs.put(None)
        try:
            self.manager.stop(block=True, timeout=10)
        except Exception as exc:  # unloading must not fail on a stop that went wrong
            log.warning("stopping the generation engine: %s", exc)


class _Inline:
    """Stands for the asyncio loop transformers posts a result handler's call to: calls it at
    once, in the batch thread."""

    @staticmethod
    def call_soon_threadsafe(callback: Callable[..., Any], *args: Any) -> None:
        callback(*args)


_INLINE = _Inline()


class _Outputs:
    """One stream's outputs, put by the batch thread, taken by whoever reads the stream: a
    thread that blocks, or a driver that waits for a wake-up (`core.wakeup`)."""

    __slots__ = ("_queue", "_wake")

    def __init__(self) -> None:
        self._queue: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self._wake: Callable[[], None] | None = None

    def put(self, output: Any) -> None:
        self._queue.put(output)
        wake, self._wake = self._wake, None
        if wake is not None:
            wake()

    def latest(self, waker: wakeup.Waker | None) -> Any:
        """The newest of the waiting outputs. Each output holds every token made so far, so a
        stream whose reader fell behind (a busy server, a slow client) skips to the newest and
        sends the tokens in between as one piece, instead of paying a decode and a piece for
        each; the last output (finished, failed, or the engine's stop: None) is never skipped.
        With none waiting: wait for one, or with a `waker`, arm it and answer `_NOTHING`."""
        waiting = self._queue
        if not waiting.empty():
            output = waiting.get_nowait()
        elif waker is None:
            output = waiting.get()
        else:
            self._wake = waker.arm()
            if waiting.empty():  # an output put before the waker was in place woke no one
                return _NOTHING
            output = waiting.get_nowait()
        while output is not None and not output.error and not waiting.empty():
            if output.is_finished():
                break
            output = waiting.get_nowait()
        return output


def _sample(logits: Any, request: GenerationRequest, generator: Any) -> int:
    import torch

    probs = torch.softmax(logits / max(request.temperature, 1e-5), dim=-1)
    if request.top_p < 1.0:
        ordered, index = torch.sort(probs, descending=True)
        keep = torch.cumsum(ordered, dim=-1) - ordered < request.top_p
        keep[0] = True
        probs = torch.zeros_like(probs).scatter(0, index[keep], ordered[keep])
    return int(torch.multinomial(probs, 1, generator=generator).item())


class _Decoder:
    """Turns a growing token list into the text it adds each step, holding back bytes of a
    character not yet complete (a byte-level tokenizer may split one across tokens).

    Each step decodes only the tokens since the last text it gave plus the ones that gave it
    (a tokenizer may join a token's text to its neighbour's, as SentencePiece does with
    spaces), not the whole list: the cost of a token stays flat however long the text grows."""

    def __init__(self, tokenizer: Any, eos: list[int]) -> None:
        self.decode = _decoder_of(tokenizer)
        self.eos = set(eos)
        self.ids: list[int] = []
        self.seen = 0  # tokens of the output read so far (eos included)
        self.prefix = 0  # start of the tokens decoded for context
        self.read = 0  # tokens whose text was given

    def feed(self, tokens: list[int]) -> str:
        self.ids.extend(t for t in tokens[self.seen :] if t not in self.eos)
        self.seen = len(tokens)
        return self._step(final=False)

    def rest(self) -> str:
        return self._step(final=True)

    def _step(self, final: bool) -> str:
        if self.read == len(self.ids):
            return ""
        decode = self.decode
        before: str = decode(self.ids[self.prefix : self.read], skip_special_tokens=True)
        text: str = decode(self.ids[self.prefix :], skip_special_tokens=True)
        if len(text) <= len(before) or (text.endswith("\ufffd") and not final):
            return ""
        self.prefix, self.read = self.read, len(self.ids)
        return text[len(before) :]


def _decoder_of(tokenizer: Any) -> Callable[..., str]:
    """The tokenizer's decode: its Rust tokenizer's own (a quarter of the cost per call) when the
    Python layer would add nothing to it (no clean-up of spaces)."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is not None and not getattr(tokenizer, "clean_up_tokenization_spaces", True):
        return backend.decode  # type: ignore[no-any-return]
    return tokenizer.decode  # type: ignore[no-any-return]


def _eos_ids(lm: Any, tokenizer: Any) -> list[int]:
    found = getattr(lm.generation_config, "eos_token_id", None)
    if found is None:
        found = getattr(lm.config, "eos_token_id", None)
    if found is None:
        found = tokenizer.eos_token_id
    if found is None:
        raise ModelLoadError("the model names no end-of-text token (eos_token_id)")
    return list(found) if isinstance(found, list | tuple) else [int(found)]
