"""Images in chat messages: checked against the model, and made self-contained before an engine
sees them.

Every API's images arrive here as OpenAI `image_url` parts (Anthropic's `image` blocks, the
Responses API's `input_image` and Ollama's `images` are translated into them first). A data URL
is checked (an image media type, base64 that decodes, within the size limit); an http(s) URL is
fetched by the server, within a size and a time limit, and passed on as a data URL, so model
processes (on cluster nodes too) never reach out themselves.

A fetch never goes to a loopback, private, link-local or otherwise non-public address unless the
operator allows it (`INFERD_IMAGE_URLS_PRIVATE=1`): anyone who can send a request would
otherwise make the server fetch from inside the network it sits in. The address checked is the
address connected to (the name is resolved once), and every redirect is checked again.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import ipaddress
import re
import socket
from typing import Any
from urllib.parse import urljoin

import httpx

from inferd.errors import InvalidRequest
from inferd.runtime.instance import ModelInstance
from inferd.settings import Settings

Json = dict[str, Any]

_DATA_URL = re.compile(r"data:(?P<type>image/[\w.+-]+)(?:;[\w=.+-]+)*;base64,(?P<data>.*)", re.S)
_REDIRECTS = 3
# What an image file starts with, for images given as bare base64 (Ollama's).
_MAGIC = (
    (b"\x89PNG\r\n\x1a\n", "image/png"),
    (b"\xff\xd8\xff", "image/jpeg"),
    (b"GIF87a", "image/gif"),
    (b"GIF89a", "image/gif"),
    (b"BM", "image/bmp"),
)


def image_parts(messages: list[Json]) -> list[tuple[str, Json]]:
    """Each `image_url` part of the messages, with where it is (for an error's `param`)."""
    found = []
    for i, message in enumerate(messages):
        content = message.get("content")
        if not isinstance(content, list):
            continue
        for j, part in enumerate(content):
            if isinstance(part, dict) and part.get("type") == "image_url":
                found.append((f"messages[{i}].content[{j}]", part))
    return found


async def inline_images(
    instance: ModelInstance, body: Json, settings: Settings, field: str | None = None
) -> None:
    """Refuse images a model cannot see; replace each image URL in `body`'s messages by the
    image's bytes as a data URL. Errors name the part at fault, or `field` where the client's
    own API has another shape (the Responses API's `input`)."""
    parts = image_parts(body.get("messages") or [])
    if not parts:
        return
    instance.require("vision", "images in messages", param=field or parts[0][0])
    limit = settings.image_max_mb << 20
    for where, part in parts:
        where = field or where
        given = part.get("image_url")
        url = given.get("url") if isinstance(given, dict) else given
        if not isinstance(url, str) or not url:
            raise InvalidRequest(f"{where}.image_url needs a url", param=f"{where}.image_url")
        param = f"{where}.image_url.url"
        if url.startswith(("http://", "https://")):
            url = await _fetched(url, settings, param)
        else:
            _check_data_url(url, limit, param)
        detail = given.get("detail") if isinstance(given, dict) else None
        part["image_url"] = {"url": url, **({"detail": detail} if detail else {})}


def data_url(data: str, param: str) -> str:
    """Base64 image bytes given bare (Ollama's `images`) as a data URL of their type."""
    try:
        head = base64.b64decode(data[:64].encode(), validate=False)
    except (binascii.Error, ValueError):
        head = b""
    media = next((m for magic, m in _MAGIC if head.startswith(magic)), None)
    if media is None and head[:4] == b"RIFF" and head[8:12] == b"WEBP":
        media = "image/webp"
    if media is None:
        raise InvalidRequest(
            "an image must be base64 of a PNG, JPEG, GIF, WebP or BMP file", param=param
        )
    return f"data:{media};base64,{data}"


def _check_data_url(url: str, limit: int, param: str) -> None:
    match = _DATA_URL.fullmatch(url)
    if match is None:
        raise InvalidRequest(
            "an image is an http(s) URL or a data URL (data:image/png;base64,...)", param=param
        )
    data = match["data"]
    if len(data) * 3 // 4 > limit:
        raise InvalidRequest(f"the image is larger than {limit >> 20} MiB", param=param)
    try:
        base64.b64decode(data, validate=True)
    except (binascii.Error, ValueError):
        raise InvalidRequest("the image's data is not valid base64", param=param) from None


async def _fetched(url: str, settings: Settings, param: str) -> str:
    """The image at `url` as a data URL; a 400 naming `param` if it cannot be had safely."""
    try:
        async with asyncio.timeout(settings.image_fetch_timeout):
            return await _fetch(url, settings, param)
    except TimeoutError:
        raise InvalidRequest(
            f"fetching the image took longer than {settings.image_fetch_timeout:g} s", param=param
        ) from None
    except httpx.HTTPError as exc:
        raise InvalidRequest(f"the image could not be fetched: {exc}", param=param) from None


async def _fetch(url: str, settings: Settings, param: str) -> str:
    limit = settings.image_max_mb << 20
    async with httpx.AsyncClient(trust_env=False, follow_redirects=False) as client:
        for _ in range(_REDIRECTS + 1):
            target = httpx.URL(url)
            if target.scheme not in ("http", "https") or not target.host:
                raise InvalidRequest(f"{url!r} is not an http(s) URL", param=param)
            address = await _address(target, settings.image_urls_private, param)
            # Connect to the address that was checked; the name still goes in Host and TLS.
            pinned = target.copy_with(host=address)
            headers = {"Host": target.netloc.decode("ascii"), "Accept": "image/*"}
            extensions = {"sni_hostname": target.host} if target.scheme == "https" else {}
            async with client.stream(
                "GET", pinned, headers=headers, extensions=extensions
            ) as response:
                if response.is_redirect and "location" in response.headers:
                    url = urljoin(url, response.headers["location"])
                    continue
                if response.status_code != 200:
                    raise InvalidRequest(
                        f"fetching the image answered HTTP {response.status_code}", param=param
                    )
                media = response.headers.get("content-type", "").split(";")[0].strip().lower()
                if not media.startswith("image/"):
                    raise InvalidRequest(
                        f"the URL is not an image (its content type is {media or 'not given'})",
                        param=param,
                    )
                data = bytearray()
                async for piece in response.aiter_bytes():
                    data += piece
                    if len(data) > limit:
                        raise InvalidRequest(
                            f"the image is larger than {settings.image_max_mb} MiB", param=param
                        )
            return f"data:{media};base64,{base64.b64encode(bytes(data)).decode()}"
    raise InvalidRequest(f"the image URL redirects more than {_REDIRECTS} times", param=param)


async def _address(target: httpx.URL, private_allowed: bool, param: str) -> str:
    """The address to connect to for `target`'s host: the first it resolves to, once each of
    them is checked to be public (unless private ones are allowed)."""
    port = target.port or (443 if target.scheme == "https" else 80)
    try:
        infos = await asyncio.get_running_loop().getaddrinfo(
            target.host, port, type=socket.SOCK_STREAM
        )
    except OSError as exc:
        message = f"the image's host {target.host!r} is unknown: {exc}"
        raise InvalidRequest(message, param=param) from None
    addresses = [str(info[4][0]) for info in infos]
    if not private_allowed:
        for address in addresses:
            ip = ipaddress.ip_address(address.split("%")[0])
            mapped = getattr(ip, "ipv4_mapped", None)
            if not (mapped or ip).is_global:
                raise InvalidRequest(
                    f"the image's host {target.host!r} is a private address ({address}); the "
                    "server fetches only from public addresses unless its operator sets "
                    "INFERD_IMAGE_URLS_PRIVATE=1",
                    param=param,
                )
    return addresses[0]
