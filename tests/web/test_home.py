"""`/` answers browsers with HTML and API clients with JSON; pages and assets need no internet."""

from __future__ import annotations

import re

import pytest

from flaskserve.app import create_app
from flaskserve.settings import Settings

BROWSER_ACCEPT = "text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8"


@pytest.fixture(scope="module")
def client(playground_repo):
    return create_app(Settings(repository=str(playground_repo))).test_client()


@pytest.mark.parametrize("accept", [None, "*/*", "application/json"])
def test_index_is_json_for_api_clients(client, accept) -> None:
    response = client.get("/", headers={"Accept": accept} if accept else {})
    assert response.mimetype == "application/json"
    models = {m["name"]: m for m in response.get_json()["models"]}
    assert set(models) == {"digits", "letters", "tabular"}
    assert models["digits"]["state"] == "READY" and models["digits"]["versions"] == ["1"]
    assert models["digits"]["inputs"] == [{"name": "input", "datatype": "FP32", "shape": [-1, 64]}]


def test_index_is_html_for_browsers(client) -> None:
    response = client.get("/", headers={"Accept": BROWSER_ACCEPT})
    assert response.mimetype == "text/html"
    page = response.get_data(as_text=True)
    for name in ("digits", "letters", "tabular"):
        assert f'href="/models/{name}"' in page


@pytest.mark.parametrize(("model", "marker"), [("digits", 'id="pad"'),
                                               ("letters", 'id="sentences"'),
                                               ("tabular", 'id="request"')])
def test_each_page_gets_the_widget_of_its_signature(client, model, marker) -> None:
    page = client.get(f"/models/{model}").get_data(as_text=True)
    assert marker in page
    for kind in ("curl", "requests", "tritonclient"):
        assert f'id="code-{kind}"' in page


def test_unknown_model_page_is_a_404_listing_the_served_ones(client) -> None:
    response = client.get("/models/nope")
    assert response.status_code == 404
    assert 'href="/models/digits"' in response.get_data(as_text=True)


def test_pages_load_nothing_from_the_internet(client) -> None:
    for path in ("/", "/models/digits", "/models/letters", "/models/tabular", "/docs"):
        page = client.get(path, headers={"Accept": BROWSER_ACCEPT}).get_data(as_text=True)
        for url in re.findall(r'(?:src|href)="([^"]+)"', page):
            assert url.startswith(("/", "#", "data:")), f"{path} loads {url}"
            if url.startswith("/assets/"):
                assert client.get(url).status_code == 200, url


def test_classic_greeting_route_is_unchanged(client) -> None:
    response = client.get("/home/ada")
    assert response.get_data(as_text=True) == "hello,ada"
    assert response.mimetype == "text/plain"
