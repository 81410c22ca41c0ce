"""The code a generative model's chat page shows: curl (server-sent events), the official
`openai` client streaming a chat, and `tritonclient.grpc` streaming `ModelStreamInfer`."""

from __future__ import annotations

from urllib.parse import urlsplit


def generation_snippets(server_url: str, name: str) -> dict[str, str]:
    host = urlsplit(server_url).hostname or "127.0.0.1"
    curl = (
        f"curl -N {server_url}/v1/chat/completions \\\n"
        "  -H 'Content-Type: application/json' \\\n"
        f"  -d '{{\"model\": \"{name}\", \"stream\": true, \"max_tokens\": 64,\n"
        "       \"messages\": [{\"role\": \"user\", \"content\": \"Hello\"}]}'\n\n"
        f"curl -N {server_url}/v2/models/{name}/generate_stream \\\n"
        "  -d '{\"text_input\": \"Hello\", \"parameters\": {\"max_tokens\": 64}}'"
    )
    openai = (
        "from openai import OpenAI\n\n"
        f'client = OpenAI(base_url="{server_url}/v1", api_key="unused")  # or your key\n'
        "stream = client.chat.completions.create(\n"
        f'    model="{name}",\n'
        '    messages=[{"role": "user", "content": "Hello"}],\n'
        "    max_tokens=64,\n"
        "    stream=True,\n"
        ")\n"
        "for chunk in stream:\n"
        '    print(chunk.choices[0].delta.content or "", end="", flush=True)'
    )
    triton = (
        "import queue\n\nimport numpy as np\nimport tritonclient.grpc as tg\n\n"
        f'client = tg.InferenceServerClient("{host}:8001")  # serve with --grpc-port 8001\n'
        "results = queue.Queue()\n"
        "client.start_stream(callback=lambda result, error: results.put((result, error)))\n"
        'prompt = tg.InferInput("text_input", [1], "BYTES")\n'
        'prompt.set_data_from_numpy(np.array([b"Hello"], dtype=object))\n'
        f'client.async_stream_infer("{name}", [prompt], parameters={{"max_tokens": 64}})\n'
        "while True:\n"
        "    result, error = results.get()\n"
        "    if error is not None:\n"
        "        raise error\n"
        '    print(result.as_numpy("text_output")[0].decode(), end="", flush=True)\n'
        '    if result.get_response().parameters["triton_final_response"].bool_param:\n'
        "        break\n"
        "client.stop_stream()"
    )
    return {"curl": curl, "openai": openai, "tritonclient": triton}
