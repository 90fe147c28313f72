"""LoRA adapters over HTTP in llama-server's shapes: /lora-adapters and a request's ``lora``."""

from __future__ import annotations

import httpx
import pytest

from kvllama.bench.synthetic_lora import write_lora

MODEL = "gemma-lora"
PROMPT = "The capital of France is"


@pytest.fixture(scope="module")
def lora_model(served, tmp_path_factory):
    path = write_lora(served.engine.model_info("gemma").path, str(tmp_path_factory.mktemp("lora") / "a.gguf"),
                      seed=1)
    served.engine.load_model(MODEL, n_seq_max=2, n_ctx=2048, n_threads=1)
    served.engine.load_adapter(MODEL, "a", path)
    yield MODEL
    served.engine.forget_model(MODEL)


def _text(http: httpx.Client, **extra: object) -> str:
    r = http.post("/v1/completions", json={"model": MODEL, "prompt": PROMPT, "max_tokens": 8,
                                           "temperature": 0, **extra})
    assert r.status_code == 200, r.text
    return r.json()["choices"][0]["text"]


def test_lora_adapters_list_set_and_per_request(served, lora_model, oai):
    with httpx.Client(base_url=served.url, timeout=60) as http:
        listed = http.get("/lora-adapters", params={"model": MODEL}).json()
        assert [(a["id"], a["name"], a["scale"]) for a in listed] == [(0, "a", 1.0)]
        default, off = _text(http), _text(http, lora=[])
        assert default != off
        assert _text(http, lora=[{"id": 0, "scale": 1.0}]) == _text(http, lora=[{"id": "a"}]) == default
        r = http.post("/v1/completions", json={"model": MODEL, "prompt": PROMPT, "lora": [{"id": 3}]})
        assert r.status_code == 400 and r.json()["error"]["param"] == "lora"
        scaled = http.post("/lora-adapters", json={"model": MODEL, "adapters": [{"id": 0, "scale": 0}]})
        assert scaled.status_code == 200 and scaled.json()[0]["scale"] == 0.0
        assert _text(http) == off  # the default set is now empty
        http.post("/lora-adapters", json={"model": MODEL, "adapters": [{"id": "a", "scale": 1.0}]})
    via_sdk = oai.completions.create(model=MODEL, prompt=PROMPT, max_tokens=8, temperature=0,
                                     extra_body={"lora": []})
    assert via_sdk.choices[0].text == off
