"""Embedding and rerank models on sentence-transformers (PyTorch, CPU or CUDA).

A rerank model is a cross-encoder (each query-document pair read together) or, for any embedding
model launched as rerank, a bi-encoder (query and documents embedded, compared by cosine).
"""

from __future__ import annotations

import base64
import functools
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from prometheus_client import Counter

from inferd.engines.base import Engine, Json, flag
from inferd.engines.batching import Collect, DynamicBatcher, Launch, ModelThread, at_once, then
from inferd.engines.ranking import rerank_response
from inferd.errors import InvalidRequest

if TYPE_CHECKING:  # torch is imported by the model process only, when it loads
    from inferd.engines.graphed_passes import GraphedPasses

_BATCH = 64
# In the model process's own registry, which the server scrapes and labels with the model.
TEXTS_AS_IDS = Counter(
    "inferd_engine_texts_as_ids",
    "Texts that arrived as their token ids, tokenized by the API process that relayed them",
)
# Weights' precision a launch may ask for (`dtype`); the library's default is float32, "auto"
# takes the checkpoint's own.
_DTYPES = ("auto", "float32", "float16", "bfloat16")


class SentenceTransformersEngine(Engine):
    name = "sentence_transformers"
    model_types = frozenset({"embedding", "rerank"})
    formats = frozenset({"pytorch"})
    requires = ("sentence_transformers", "torch")
    extra = "sentence-transformers"
    cpu_options = {"device": "cpu"}

    def load(self) -> None:
        from sentence_transformers import SentenceTransformer

        options = dict(self.config.options)
        device = options.pop("device", None)
        trust_remote_code = flag(options, "trust_remote_code")
        eager = flag(options, "enforce_eager")  # vLLM's name for "no CUDA graphs"
        compile_ = flag(options, "compile")  # Infinity's name for `torch.compile` (on a GPU)
        dtype = options.pop("dtype", None)
        if dtype is not None and dtype not in _DTYPES:
            raise InvalidRequest(
                f"dtype must be one of {', '.join(_DTYPES)}, not {dtype!r}", param="dtype"
            )
        weights = {"dtype": dtype} if dtype is not None else None
        self._refuse_unknown(options)
        family = self.config.family
        self._cross = self.config.model_type == "rerank" and family["method"] == "cross-encoder"
        if self._cross:
            from sentence_transformers import CrossEncoder

            self._model = CrossEncoder(
                self.config.model_path,
                device=device,
                max_length=family["max_tokens"],
                trust_remote_code=trust_remote_code,
                local_files_only=True,
                model_kwargs=weights,
            )
            if self._model.num_labels != 1:
                # A classifier of several labels (NLI's entailment/neutral/contradiction) gives
                # no one relevance to rank by.
                raise InvalidRequest(
                    f"a rerank model scores each pair with one number; this cross-encoder has "
                    f"{self._model.num_labels} outputs (a classifier); launch one with a single "
                    "output",
                    param="model_name",
                )
        else:
            self._model = SentenceTransformer(
                self.config.model_path,
                device=device,
                trust_remote_code=trust_remote_code,
                local_files_only=True,
                model_kwargs=weights,
            )
        self._features = self._tokenizing()
        self._prompts, self._default_prompt, self._pools_prompt = (
            ({}, None, True) if self._cross else _prompts(self._model)
        )
        # Relays tokenize only what the model reads as sent: a default prompt is the model's.
        self._relays = None if self._cross or self._default_prompt else self._for_relays()
        self._module: Any = self._compiled() if compile_ else self._model
        self._passes = None if eager else self._graphed()
        # One thread runs the model: torch already spreads one forward pass over every core,
        # and concurrent requests are batched into that pass rather than run side by side.
        self._thread = ModelThread("embed")
        self._batcher: DynamicBatcher[str | list[int]] = DynamicBatcher(
            self._thread, self._embedding_pass, _length, max_items=_BATCH
        )
        # Rerank requests share forward passes too: on a GPU one request's few pairs leave most
        # of a pass idle, and 32 clients ranking 8 documents each fill it.
        pairs = self._pairs_pass if self._features is not None else at_once(self._predicted)
        self._pairs: DynamicBatcher[tuple[str, str]] = DynamicBatcher(
            self._thread, pairs, lambda pair: len(pair[0]) + len(pair[1]), max_items=_BATCH
        )

    def _graphed(self) -> GraphedPasses | None:
        """The model's passes (the compiled model's, launched with `compile`) replayed as CUDA
        graphs (`GraphedPasses`) where it runs on a GPU and its tokenizer pads on the right (the
        side the graphs pad), else None (eager)."""
        model = self._model
        tokenizer = getattr(model, "tokenizer", None)
        if tokenizer is None or model.device.type != "cuda" or tokenizer.padding_side != "right":
            return None
        if getattr(model, "preprocess", None) is None:  # sentence-transformers before 6
            return None
        from inferd.engines.graphed_passes import GraphedPasses

        output = "scores" if self._cross else "sentence_embedding"
        return GraphedPasses(self._module, output, tokenizer.pad_token_id or 0, model.device)

    def _compiled(self) -> Any:
        """The model compiled (`compiled_encoder`), its compiles done now; refused where it
        does not run on a GPU or is scored through `predict` (a cross-encoder before
        sentence-transformers 6)."""
        from inferd.engines.compiled_encoder import compiled

        if self._model.device.type != "cuda":
            raise InvalidRequest(
                f"compile is for models on a GPU; this one runs on {self._model.device.type} "
                "(where the compiled model was no quicker)",
                param="compile",
            )
        prepare = self._features
        if prepare is None:
            raise InvalidRequest(
                "compile needs sentence-transformers 6 or later for a cross-encoder",
                param="compile",
            )
        texts = ["one text to compile with", "and a second, longer one to compile with"]
        samples: list[list[Any]] = [texts[:1], texts]
        if self._cross:
            samples = [[(texts[0], text) for text in sample] for sample in samples]
        try:
            return compiled(self._model, [prepare(sample) for sample in samples])
        except Exception as error:  # asked for by name: the launch says why it cannot be
            raise InvalidRequest(
                f"compiling the model failed ({type(error).__name__}: {error}); launch "
                "without compile",
                param="compile",
            ) from error

    def _tokenizing(self) -> Callable[[list[Any]], dict[str, Any]] | None:
        """What makes a pass's features: the tokenizer's Rust backend directly where it gives
        what the model's own `preprocess` gives (`DirectTokenizer`), else `preprocess` (with a
        cross-encoder's default prompt); None where a cross-encoder predates
        sentence-transformers 6 (scored through `predict`)."""
        from inferd.engines.direct_tokenizer import DirectTokenizer

        model = self._model
        prepare = getattr(model, "preprocess", None)
        if self._cross:
            if prepare is None:
                return None
            resolve = getattr(model, "_resolve_prompt", None)
            prompt = resolve(None, None) if resolve is not None else None  # the model's default
            if prompt is not None:
                return functools.partial(prepare, prompt=prompt)
        elif prepare is None:  # `preprocess` replaced `tokenize` in sentence-transformers 6
            prepare = model.tokenize
        tokenizer = getattr(model, "tokenizer", None)
        direct = DirectTokenizer.verified(prepare, tokenizer, pairs=self._cross)
        return direct if direct is not None else prepare

    def _prompt(self, request: Json) -> str | None:
        """The text put before each input, as sentence-transformers' `encode` puts it: the
        request's `prompt`, else the model's prompt named `prompt_name` (Xinference passes both
        to `encode`; TEI takes `prompt_name`), else the model's default prompt."""
        prompt, name = request.get("prompt"), request.get("prompt_name")
        if prompt is None and name is not None:
            if name not in self._prompts:
                named = ", ".join(sorted(self._prompts)) or "none"
                raise InvalidRequest(
                    f"prompt_name {name!r} is not one of this model's prompts ({named})",
                    param="prompt_name",
                )
            prompt = self._prompts[name]
        if prompt and not self._pools_prompt:
            raise InvalidRequest(
                "this model leaves a prompt out of its pooling (include_prompt false), which "
                "inferd does not do",
                param="prompt_name" if request.get("prompt") is None else "prompt",
            )
        return prompt if prompt is not None else self._default_prompt

    def _role_prompt(self, names: tuple[str, ...]) -> str:
        """The first of the model's prompts `names` has, else its default prompt (a model that
        leaves its prompt out of pooling gets none here)."""
        if not self._pools_prompt:
            return ""
        found = next((self._prompts[name] for name in names if name in self._prompts), None)
        return found if found is not None else self._default_prompt or ""

    def _for_relays(self) -> dict[str, Any] | None:
        """The tokenizer the relays may tokenize with (`relay_tokenizer`), where the model's
        texts are tokenized by `DirectTokenizer`, whose backend the relays' copy is."""
        from inferd.engines.direct_tokenizer import DirectTokenizer

        features = self._features
        return features.for_relays() if isinstance(features, DirectTokenizer) else None

    def relay_tokenizer(self) -> dict[str, Any] | None:
        return self._relays

    def _launch(self, features: dict[str, Any], output: str) -> Callable[[], Any]:
        """Starts the model's pass over a pass's features; the returned call waits for its
        `output` as float32 on the host (a NumPy array). Through CUDA graphs where they are
        kept (`Running`: another pass may start beside it); an eager pass on a GPU also runs on
        while the host goes on."""
        if self._passes is not None:
            return self._passes.launch(features)
        import torch
        from sentence_transformers.util import batch_to_device

        # A plain dict, as `GraphedPasses` and the compiled model's warm-ups call it: Dynamo
        # guards on the input's type, and the tokenizer's `BatchEncoding` would run a compiled
        # model's every pass eagerly (`compile` with `enforce_eager`, or left padding).
        with torch.inference_mode():
            on_device = dict(batch_to_device(features, self._model.device))
            result = self._module(on_device)[output].float()
        return lambda: result.cpu().numpy()

    def slots(self) -> int:
        # Requests share forward passes of up to _BATCH texts (or query-document pairs).
        return _BATCH

    def close(self) -> None:
        self._thread.close()

    async def embed(self, request: Json) -> Json:
        # A relay holding the model's tokenizer sends each text's ids instead (`input_ids`):
        # the model thread then only pads them, and tokenizing is spread over the relays.
        ids: list[list[int]] | None = request.get("input_ids")
        if ids is not None and (self._relays is None or _asks_prompt(request)):
            raise InvalidRequest("this model takes texts here, not input ids", param="input_ids")
        inputs: list[Any] = ids if ids is not None else request["input"]
        if ids is not None:
            TEXTS_AS_IDS.inc(len(ids))
        else:
            prompt = self._prompt(request)
            if prompt:
                inputs = [prompt + text for text in inputs]
        rows = await self._batcher.submit(inputs)
        vectors = [vector for vector, _ in rows]
        tokens = sum(count for _, count in rows)
        as_base64 = request.get("encoding_format") == "base64"
        dimensions = request.get("dimensions")
        data = []
        for index, vector in enumerate(vectors):
            if dimensions is not None:
                vector = _truncate(vector, dimensions)
            # A float32 array as is: the model process writes it with orjson's numpy support,
            # each number in the shortest form that reads back as the same float32 (40% less
            # JSON than Python's floats, and quicker for both sides).
            embedding: Any = (
                base64.b64encode(vector.astype("<f4").tobytes()).decode("ascii")
                if as_base64
                else vector
            )
            data.append({"object": "embedding", "index": index, "embedding": embedding})
        return {
            "object": "list",
            "model": self.config.model_uid,
            "data": data,
            "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
        }

    async def rerank(self, request: Json) -> Json:
        query: str = request["query"]
        documents: list[str] = request["documents"]
        if self._cross:
            rows = await self._pairs.submit([(query, document) for document in documents])
            scores = [score for score, _ in rows]
            tokens = sum(count for _, count in rows)
        else:
            scores, tokens = await self._cosines(query, documents)
        return rerank_response(self.config.model_uid, request, scores, tokens)

    async def _cosines(self, query: str, documents: list[str]) -> tuple[list[float], int]:
        """A bi-encoder's ranking: each document's cosine to the query, its texts embedded in
        passes shared with other requests."""
        import numpy as np

        # As the library's `encode_query` and `encode_document` put their prompts.
        asking = self._role_prompt(("query",))
        answering = self._role_prompt(("document", "passage", "corpus"))
        texts: list[str | list[int]] = [asking + query, *(answering + d for d in documents)]
        rows = await self._batcher.submit(texts)
        vectors = np.stack([vector for vector, _ in rows]).astype(np.float32)
        norms = np.linalg.norm(vectors, axis=1, keepdims=True)
        unit = vectors / np.where(norms > 0, norms, 1.0)
        return [float(v) for v in unit[1:] @ unit[0]], sum(count for _, count in rows)

    def _pairs_pass(self, pairs: list[tuple[str, str]]) -> Launch:
        """A pass of query-document pairs (`DynamicBatcher`'s stages), collected as (relevance,
        token count) per pair.

        As for embeddings, the model's modules are called directly: `CrossEncoder.predict`
        moves the model to its device, sorts the pairs and collects the scores one tensor
        element at a time on every call, most of a short pair's time on a GPU, and the token
        counts would need a second tokenization."""
        model = self._model
        prepare = self._features
        assert prepare is not None  # else the pairs go to `_predicted`
        activation = model.activation_fn
        features = prepare(pairs)
        # NumPy, not torch: a call into torch gives up the interpreter lock (see graphed_passes).
        counts = features["attention_mask"].numpy().sum(axis=1).tolist()

        def finish(scored: Any) -> list[tuple[float, int]]:
            import torch

            with torch.inference_mode():
                scores = torch.from_numpy(scored)
                if activation is not None:
                    scores = activation(scores)  # parameterless (Sigmoid, Identity): host
                if scores.ndim > 1 and model.num_labels == 1:
                    scores = scores.squeeze(-1)
            return list(zip(scores.tolist(), counts, strict=True))

        def launch() -> Collect:
            return then(self._launch(features, "scores"), finish)

        return launch

    def _predicted(self, pairs: list[tuple[str, str]]) -> list[tuple[float, int]]:
        model = self._model
        scores = model.predict(pairs, batch_size=_BATCH, convert_to_numpy=True)
        encoded = model.tokenizer(
            [query for query, _ in pairs],
            [document for _, document in pairs],
            truncation=True,
            max_length=model.max_length,
        )
        counts = [len(ids) for ids in encoded["input_ids"]]
        return [(float(score), count) for score, count in zip(scores, counts, strict=True)]

    def _embedding_pass(self, inputs: list[str | list[int]]) -> Launch:
        """A pass of texts or texts' ids (`DynamicBatcher`'s stages), collected as (vector,
        token count) per text.

        The model's own modules are called directly rather than through `encode`, which would
        tokenize a second time and walk the model's modules on every call: a millisecond of
        a single sentence's ten."""
        prepare = self._features
        assert prepare is not None  # an embedding model always has one
        if all(isinstance(text, str) for text in inputs):
            features = prepare(inputs)
        else:  # ids only come where relays are offered the tokenizer: a `DirectTokenizer`
            features = prepare.stacked(inputs)  # type: ignore[attr-defined]
        # The model's truncation holds on every path, so the mask counts the tokens it saw.
        counts = features["attention_mask"].numpy().sum(axis=1).tolist()

        def launch() -> Collect:
            vectors = self._launch(features, "sentence_embedding")
            return then(vectors, lambda got: list(zip(got, counts, strict=True)))

        return launch


def _prompts(model: Any) -> tuple[dict[str, str], str | None, bool]:
    """The model's named prompts, its default one, and whether it pools over a prompt's tokens
    (not where it leaves them out, as INSTRUCTOR's kind does: sentence-transformers then passes
    the prompt's length into the pass, and a CUDA graph would keep the first pass's)."""
    prompts = dict(getattr(model, "prompts", None) or {})
    default_name = getattr(model, "default_prompt_name", None)
    default = prompts.get(default_name) if default_name else None
    pools_prompt = all(getattr(module, "include_prompt", True) is not False for module in model)
    if default and not pools_prompt:
        raise InvalidRequest(
            "this model's default prompt is left out of its pooling (include_prompt false), "
            "which inferd does not do",
            param="model_name",
        )
    return prompts, default, pools_prompt


def _asks_prompt(request: Json) -> bool:
    return request.get("prompt") is not None or request.get("prompt_name") is not None


def _length(text: str | list[int]) -> int:
    """How long a text is, in characters, for ordering a batch's texts by length; a text's ids
    count four characters a token (as English text runs), for batches that hold both."""
    return len(text) if isinstance(text, str) else 4 * len(text)


def _truncate(vector: Any, dimensions: int) -> Any:
    """Matryoshka-style truncation, re-normalised, as OpenAI's `dimensions` does."""
    import numpy as np

    cut = vector[:dimensions]
    norm = float(np.linalg.norm(cut))
    return cut / norm if norm > 0 else cut
