"""transformers' own continuous batching over a paged KV cache, behind the decoders' interface.

The batching manager runs one generation loop in a thread of its own: a request joins the
running batch between steps and leaves when it ends. It is the transformers engine's decoder on
CPUs and for models the static decoder cannot hold (sliding-window and hybrid caches).
"""

from __future__ import annotations

import contextlib
from typing import Any

from inferd.engines.decoding import Deliver, Output, Request


class PagedDecoder:
    def __init__(
        self, model: Any, eos: list[int], pad: int, batching: dict[str, Any], grammar: Any
    ):
        from transformers import GenerationConfig
        from transformers.generation.configuration_utils import ContinuousBatchingConfig

        # Sampling processors exist only if the base config departs from their defaults; each
        # request then sets its own temperature, top_p and top_k.
        generation = GenerationConfig(
            do_sample=True,
            temperature=0.7,
            top_p=0.9,
            top_k=50,
            max_new_tokens=256,
            eos_token_id=eos,
            pad_token_id=pad,
        )
        config = ContinuousBatchingConfig(
            per_request_processors=True,
            return_logprobs=True,
            # Grammar masks need each step's token before the next step is scheduled.
            use_async_batching=False,
            use_cuda_graph=False,
            **batching,
        )
        self._manager = model.init_continuous_batching(
            generation_config=generation, continuous_batching_config=config
        )
        self._grammar = grammar
        if grammar is not None:
            from inferd.engines import grammar as grammars

            grammars.install(self._manager, grammar)
        self._manager.start()

    def submit(self, request: Request, deliver: Deliver) -> None:
        def handle(output: Any) -> None:
            deliver(
                Output(
                    list(output.generated_tokens),
                    output.is_finished(),
                    list(output.logprobs or []),
                    str(output.error) if output.error else None,
                )
            )

        self._manager.register_result_handler(request.id, handle)
        added = self._manager.add_request(
            request.prompt,
            request_id=request.id,
            max_new_tokens=request.max_new_tokens,
            streaming=request.streaming,
            eos_token_id=request.eos,
            temperature=request.sampling.temperature,
            top_p=request.sampling.top_p,
            top_k=request.sampling.top_k,
        )
        if added is None:
            self.cancel(request.id)
            raise RuntimeError("the generation loop is not accepting requests (it stopped)")

    def cancel(self, request_id: str) -> None:
        self._manager.cancel_request(request_id)
        self.forget(request_id)

    def forget(self, request_id: str) -> None:
        # A cancelled request never delivers a final output, so its handler would stay.
        router = self._manager.output_router
        with router._lock:
            router.result_handlers.pop(request_id, None)

    def stop(self) -> None:
        with contextlib.suppress(Exception):
            self._manager.stop(block=False)
