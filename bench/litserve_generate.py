"""LitServe peer for the generation bench: OpenAI chat completions (`ls.OpenAISpec`), streamed.

    MODEL_DIR=/path/to/version PORT=19960 python bench/litserve_generate.py

Run by bench/generation_peers.py with LitServe's own venv (litserve is not a flaskserve
dependency). LitServe has no continuous batching for streams: one inference worker
(`workers_per_device=1`, torch on every core, as the other servers here) decodes one request at a
time, token by token with the model's KV cache, yielding each token's text as LitServe's OpenAI
spec asks (its documented way to stream); a request's usage goes in its last piece.
"""

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import litserve as ls
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

MODEL_DIR = os.environ["MODEL_DIR"]


class GenerateAPI(ls.LitAPI):
    def setup(self, device):
        self.tokenizer = AutoTokenizer.from_pretrained(MODEL_DIR, local_files_only=True)
        self.lm = AutoModelForCausalLM.from_pretrained(MODEL_DIR, local_files_only=True).eval()
        eos = self.lm.generation_config.eos_token_id
        self.eos = set(eos if isinstance(eos, list) else [eos])

    def predict(self, request, context):
        messages = [{"role": m.role, "content": m.content} for m in request.messages]
        ids = self.tokenizer.apply_chat_template(messages, add_generation_prompt=True,
                                                 tokenize=True, return_dict=False)
        ids = list(ids["input_ids"] if isinstance(ids, dict) else ids)
        budget = int(request.max_completion_tokens or request.max_tokens or 64)
        temperature = float(request.temperature or 0.0)
        made: list[int] = []
        sent = 0
        with torch.inference_mode():
            step = torch.tensor([ids])
            past = None
            while len(made) < budget:
                out = self.lm(input_ids=step, past_key_values=past, use_cache=True)
                past = out.past_key_values
                logits = out.logits[0, -1].float()
                if temperature > 0:
                    probs = torch.softmax(logits / temperature, dim=-1)
                    token = int(torch.multinomial(probs, 1).item())
                else:
                    token = int(logits.argmax())
                if token in self.eos:
                    break
                made.append(token)
                text = self.tokenizer.decode(made, skip_special_tokens=True)
                if not text.endswith("\ufffd"):
                    yield {"role": "assistant", "content": text[sent:]}
                    sent = len(text)
                step = torch.tensor([[token]])
        yield {"role": "assistant", "content": "", "prompt_tokens": len(ids),
               "completion_tokens": len(made), "total_tokens": len(ids) + len(made)}


if __name__ == "__main__":
    server = ls.LitServer(GenerateAPI(spec=ls.OpenAISpec()), accelerator="cpu",
                          workers_per_device=1)
    server.run(host="127.0.0.1", port=int(os.environ.get("PORT", "19960")), log_level="warning",
               generate_client_file=False)
