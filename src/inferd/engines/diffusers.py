"""Text to image through diffusers pipelines (Stable Diffusion, SDXL, SD3, FLUX), CPU or CUDA.

One image batch runs at a time on the model's thread: a denoising loop already fills the GPU.
"""

from __future__ import annotations

import asyncio
import base64
import io
import time
from concurrent.futures import ThreadPoolExecutor

from inferd.engines.base import Engine, Json


class DiffusersEngine(Engine):
    name = "diffusers"
    model_types = frozenset({"image"})
    formats = frozenset({"pytorch"})
    requires = ("diffusers", "torch")
    extra = "image"
    cpu_options = {"device": "cpu"}

    def load(self) -> None:
        import torch
        from diffusers import AutoPipelineForText2Image

        options = dict(self.config.options)
        device = options.pop("device", None) or ("cuda" if torch.cuda.is_available() else "cpu")
        dtype = options.pop("dtype", None) or (
            "float16" if device.startswith("cuda") else "float32"
        )
        self._steps = int(options.pop("num_inference_steps", self.config.family["default_steps"]))
        self._refuse_unknown(options)
        self._pipeline = AutoPipelineForText2Image.from_pretrained(
            self.config.model_path, torch_dtype=getattr(torch, dtype), local_files_only=True
        ).to(device)
        self._pipeline.set_progress_bar_config(disable=True)
        self._device = device
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="diffusers")

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)

    async def images(self, request: Json) -> Json:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._pool, self._generate, request)

    def _generate(self, request: Json) -> Json:
        import torch

        width, height = (int(v) for v in request["size"].split("x"))
        seed = request.get("seed")
        generator = None if seed is None else torch.Generator(self._device).manual_seed(seed)
        extra = {}
        if request.get("guidance_scale") is not None:
            extra["guidance_scale"] = float(request["guidance_scale"])
        if request.get("negative_prompt"):
            extra["negative_prompt"] = request["negative_prompt"]
        result = self._pipeline(
            request["prompt"],
            num_images_per_prompt=int(request.get("n") or 1),
            width=width,
            height=height,
            num_inference_steps=int(request.get("num_inference_steps") or self._steps),
            generator=generator,
            **extra,
        )
        as_url = request.get("response_format") == "url"
        data = []
        for image in result.images:
            png = io.BytesIO()
            image.save(png, format="PNG")
            encoded = base64.b64encode(png.getvalue()).decode("ascii")
            # No file server behind "url": a data URL carries the image itself.
            data.append(
                {"url": f"data:image/png;base64,{encoded}"} if as_url else {"b64_json": encoded}
            )
        return {"created": int(time.time()), "data": data}
