"""Copy-paste client code for a model: curl, Python `requests` and `tritonclient.http`, and the
official `openai` client for embedding models (text in, one vector out).

Each snippet sends the model's example request (`examples.example_request`) to this server, so
what a visitor copies from the playground runs as it is. The server's address comes from the
settings (`--public-url`, else the bound address), never from the request's Host header: a page
must not print whatever name a request claims (DNS rebinding, cache poisoning).

Under `--auth` each snippet sends the key from the environment variable `FLASKSERVE_API_KEY`
(`KEY_VARIABLE`): a page never prints a key, even the one its visitor typed in.
"""

from __future__ import annotations

import json
import pprint
import shlex
from typing import Any
from urllib.parse import urlsplit

from flaskserve.core.model import TensorSpec
from flaskserve.protocol.openai import is_embedding_model
from flaskserve.web.examples import example_request

#: Where the snippets read the API key from (servers run with `--auth`).
KEY_VARIABLE = "FLASKSERVE_API_KEY"
_PY_KEY = f'"Bearer " + os.environ["{KEY_VARIABLE}"]'

_NUMPY_DTYPE = {
    "BOOL": "np.bool_",
    "UINT8": "np.uint8",
    "UINT16": "np.uint16",
    "UINT32": "np.uint32",
    "UINT64": "np.uint64",
    "INT8": "np.int8",
    "INT16": "np.int16",
    "INT32": "np.int32",
    "INT64": "np.int64",
    "FP16": "np.float16",
    "FP32": "np.float32",
    "FP64": "np.float64",
    "BYTES": "np.object_",
}


def base_url(public_url: str | None, host: str, port: int) -> str:
    """`public_url` when set, else the address the server is bound to; a wildcard bind
    (0.0.0.0, ::) is shown as loopback, the address that reaches it from the same machine."""
    if public_url:
        return public_url.rstrip("/")
    name = host.strip("[]")
    if name in ("", "0.0.0.0"):
        name = "127.0.0.1"
    elif name == "::":
        name = "::1"
    return f"http://[{name}]:{port}" if ":" in name else f"http://{name}:{port}"


def infer_path(name: str) -> str:
    return f"/v2/models/{name}/infer"


def snippets(
    base_url: str,
    name: str,
    inputs: list[TensorSpec],
    outputs: list[TensorSpec],
    auth: bool = False,
) -> dict[str, str]:
    """{"curl": ..., "requests": ..., "tritonclient": ...} for model `name` at `base_url`;
    `auth`: the server needs an API key, which they read from `$FLASKSERVE_API_KEY`."""
    base_url = base_url.rstrip("/")
    request = example_request(inputs)
    found = {
        "curl": curl(base_url, name, request, auth),
        "requests": python_requests(base_url, name, request, auth),
        "tritonclient": tritonclient(base_url, name, inputs, outputs, request, auth),
    }
    if is_embedding_model(inputs, outputs):
        texts = request["inputs"][0]["data"]
        found["openai"] = openai_embeddings(base_url, name, texts, auth)
    return found


def curl(base_url: str, name: str, request: dict[str, Any], auth: bool = False) -> str:
    body = json.dumps(request, separators=(",", ":"))
    key = f'  -H "Authorization: Bearer ${KEY_VARIABLE}" \\\n' if auth else ""
    return (
        f"curl -s {shlex.quote(base_url + infer_path(name))} \\\n"
        f"{key}"
        "  -H 'Content-Type: application/json' \\\n"
        f"  -d {shlex.quote(body)}"
    )


def python_requests(
    base_url: str, name: str, request: dict[str, Any], auth: bool = False
) -> str:
    url = base_url + infer_path(name)
    if auth:
        head = ["import os", "", "import requests", ""]
        head.append(f"headers = {{\"Authorization\": {_PY_KEY}}}")
        call = f"requests.post({url!r}, json=request, headers=headers, timeout=30)"
    else:
        head = ["import requests"]
        call = f"requests.post({url!r}, json=request, timeout=30)"
    return "\n".join(
        [
            *head,
            "",
            f"request = {_python_literal(request)}",
            f"response = {call}",
            "response.raise_for_status()",
            'for output in response.json()["outputs"]:',
            '    print(output["name"], output["shape"], output["data"][:10])',
        ]
    )


def tritonclient(
    base_url: str,
    name: str,
    inputs: list[TensorSpec],
    outputs: list[TensorSpec],
    request: dict[str, Any],
    auth: bool = False,
) -> str:
    parts = urlsplit(base_url)
    url = (parts.netloc + parts.path.rstrip("/")) or base_url
    tls = ", ssl=True" if parts.scheme == "https" else ""
    lines = [
        *(["import os", ""] if auth else []),
        "import numpy as np",
        "import tritonclient.http as httpclient",
        "",
        f"client = httpclient.InferenceServerClient(url={url!r}{tls})",
        "inputs = []",
    ]
    for spec, tensor in zip(inputs, request["inputs"], strict=True):
        data = tensor["data"]
        if spec.datatype == "BYTES":
            data = [value.encode("utf-8") for value in data]
        lines += [
            f"array = np.array({data!r}, dtype={_NUMPY_DTYPE[spec.datatype]})"
            f".reshape({tensor['shape']!r})",
            f"tensor = httpclient.InferInput({spec.name!r}, list(array.shape), {spec.datatype!r})",
            "tensor.set_data_from_numpy(array)",
            "inputs.append(tensor)",
        ]
    headers = f', headers={{"Authorization": {_PY_KEY}}}' if auth else ""
    lines.append(f"result = client.infer({name!r}, inputs{headers})")
    lines += [f"print({spec.name!r}, result.as_numpy({spec.name!r}))" for spec in outputs]
    return "\n".join(lines)


def openai_embeddings(base_url: str, name: str, texts: list[str], auth: bool = False) -> str:
    """The official `openai` client on `POST /v1/embeddings`, for embedding models."""
    if auth:
        head = ["import os", "", "from openai import OpenAI", ""]
        key = f'os.environ["{KEY_VARIABLE}"]'
    else:
        head = ["from openai import OpenAI", "",
                "# api_key: your key when the server runs with --auth; any text otherwise."]
        key = "'unused'"
    return "\n".join(
        [
            *head,
            f"client = OpenAI(base_url={base_url + '/v1'!r}, api_key={key})",
            f"response = client.embeddings.create(model={name!r}, input={texts!r})",
            "for item in response.data:",
            "    print(item.index, len(item.embedding), item.embedding[:4])",
            'print("prompt_tokens", response.usage.prompt_tokens)',
        ]
    )


def _python_literal(request: dict[str, Any]) -> str:
    """The request as Python source, wrapped to stay readable."""
    return pprint.pformat(request, width=96, compact=True, sort_dicts=False)
