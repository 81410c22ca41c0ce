"""A small causal language model built here, offline: a byte-level BPE tokenizer trained with
`tokenizers`, a Llama-shaped model from `transformers`, saved with `save_pretrained`.

`build_lm(folder, texts, train_seconds=0)` writes a version folder the `transformers` runtime
serves. With `train_seconds=0` the weights stay random (what the tests use: it takes a second);
with time to train, the model learns the texts it is given well enough that its output reads
as text.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from pathlib import Path

EOS = "<|endoftext|>"
#: A chat template in the plainest form: one line per message, then the assistant's turn.
CHAT_TEMPLATE = (
    "{% for message in messages %}{{ message['role'] }}: {{ message['content'] }}\n"
    "{% endfor %}{% if add_generation_prompt %}assistant:{% endif %}"
)


def build_lm(
    folder: Path,
    texts: Sequence[str],
    vocab_size: int = 320,
    hidden_size: int = 32,
    layers: int = 2,
    context: int = 256,
    train_seconds: float = 0.0,
    seed: int = 0,
    bigram_start: bool = False,
) -> dict[str, float]:
    """Write tokenizer and model into `folder`; returns what training reached (steps, loss).

    `bigram_start` (needs `hidden_size` >= the vocabulary) writes the texts' bigram statistics
    straight into the weights before any training: each token's embedding is its own axis, the
    attention and MLP outputs start at zero (so the residual stream carries the token through),
    and the output layer holds log P(next | token). Counting takes a second where gradient
    descent on a busy two-core machine needs many minutes to learn as much; training then starts
    from there and adds what attention can learn.
    """
    import torch
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import (
        GenerationConfig,
        LlamaConfig,
        LlamaForCausalLM,
        PreTrainedTokenizerFast,
    )

    torch.manual_seed(seed)
    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=[EOS],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    bpe.train_from_iterator(texts, trainer)
    tokenizer = PreTrainedTokenizerFast(  # type: ignore[no-untyped-call]
        tokenizer_object=bpe, eos_token=EOS, bos_token=EOS, pad_token=EOS
    )
    tokenizer.chat_template = CHAT_TEMPLATE
    eos = tokenizer.eos_token_id
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=hidden_size,
        intermediate_size=64 if bigram_start else hidden_size * 4,
        num_hidden_layers=layers,
        num_attention_heads=4,
        num_key_value_heads=4,
        max_position_embeddings=context,
        eos_token_id=eos,
        bos_token_id=eos,
        pad_token_id=eos,
        tie_word_embeddings=not bigram_start,
    )
    lm = LlamaForCausalLM(config)
    if bigram_start:
        _write_bigrams(lm, tokenizer, texts)
    reached = _train(lm, tokenizer, texts, context, train_seconds) if train_seconds else {}
    lm.generation_config = GenerationConfig(  # type: ignore[no-untyped-call]
        eos_token_id=eos, pad_token_id=eos, bos_token_id=eos, max_new_tokens=128
    )
    folder.mkdir(parents=True, exist_ok=True)
    lm.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return reached


def _write_bigrams(lm: object, tokenizer: object, texts: Sequence[str]) -> None:
    import torch

    vocab = lm.config.vocab_size  # type: ignore[attr-defined]
    hidden = lm.config.hidden_size  # type: ignore[attr-defined]
    if hidden < vocab:
        raise ValueError(f"bigram_start needs hidden_size >= vocab_size ({vocab})")
    eos = tokenizer.eos_token_id  # type: ignore[attr-defined]
    counts = torch.full((vocab, vocab), 1e-3)  # a little smoothing: rare pairs stay rare
    for text in texts:
        ids = [eos, *tokenizer(text)["input_ids"], eos]  # type: ignore[operator]
        pairs = torch.tensor([ids[:-1], ids[1:]])
        counts.index_put_((pairs[0], pairs[1]), torch.ones(pairs.shape[1]), accumulate=True)
    log_next = torch.log(counts / counts.sum(dim=1, keepdim=True))  # [token, next]
    with torch.no_grad():
        embed = lm.model.embed_tokens.weight  # type: ignore[attr-defined]
        embed.zero_()
        embed[:, :vocab] = torch.eye(vocab)
        for layer in lm.model.layers:  # type: ignore[attr-defined]
            layer.self_attn.o_proj.weight.zero_()
            layer.mlp.down_proj.weight.zero_()
        # The final RMSNorm turns a one-hot vector into sqrt(hidden) times it.
        head = lm.lm_head.weight  # type: ignore[attr-defined]
        head.zero_()
        head[:, :vocab] = log_next.T / hidden**0.5


def _train(
    lm: object, tokenizer: object, texts: Sequence[str], context: int, seconds: float
) -> dict[str, float]:
    """Next-token training on `texts` (joined by end-of-text) for `seconds` of wall time."""
    import torch

    eos = tokenizer.eos_token_id  # type: ignore[attr-defined]
    ids: list[int] = []
    for text in texts:
        ids.extend(tokenizer(text)["input_ids"])  # type: ignore[operator]
        ids.append(eos)
    data = torch.tensor(ids)
    window = min(64, context)
    batch = 16
    model = lm  # a torch module
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)  # type: ignore[attr-defined]
    model.train()  # type: ignore[attr-defined]
    deadline = time.monotonic() + seconds
    steps, loss_value = 0, float("nan")
    while time.monotonic() < deadline:
        starts = torch.randint(0, max(1, len(data) - window - 1), (batch,))
        inputs = torch.stack([data[s : s + window] for s in starts])
        loss = model(input_ids=inputs, labels=inputs).loss  # type: ignore[operator]
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        steps += 1
        loss_value = float(loss.detach())
    model.eval()  # type: ignore[attr-defined]
    return {"steps": float(steps), "loss": loss_value}
