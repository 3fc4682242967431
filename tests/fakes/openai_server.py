"""A fake OpenAI-compatible API (chat completions and embeddings) speaking the real wire format."""

from __future__ import annotations

import hashlib
import json
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route


@dataclass
class FakeOpenAI:
    """Answers chat completions with ``reply(messages)``; records every request it gets."""

    reply: Callable[[list[dict[str, Any]]], str]
    requests: list[dict[str, Any]] = field(default_factory=list)
    fail_with: int | None = None
    embedding_dims: int = 64

    def app(self) -> Starlette:
        async def chat(request: Request) -> JSONResponse:
            body = await request.json()
            self.requests.append({"path": request.url.path, "headers": dict(request.headers), "body": body})
            if self.fail_with is not None:
                return JSONResponse(
                    {"error": {"message": "upstream overloaded", "type": "server_error", "code": None}},
                    status_code=self.fail_with,
                )
            content = self.reply(body["messages"])
            return JSONResponse(
                {
                    "id": "chatcmpl-fake",
                    "object": "chat.completion",
                    "created": int(time.time()),
                    "model": body.get("model", "fake"),
                    "choices": [
                        {
                            "index": 0,
                            "message": {"role": "assistant", "content": content},
                            "finish_reason": "stop",
                            "logprobs": None,
                        }
                    ],
                    "usage": {"prompt_tokens": 10, "completion_tokens": 10, "total_tokens": 20},
                }
            )

        async def embeddings(request: Request) -> JSONResponse:
            body = await request.json()
            self.requests.append({"path": request.url.path, "headers": dict(request.headers), "body": body})
            texts = body["input"] if isinstance(body["input"], list) else [body["input"]]
            dims = int(body.get("dimensions") or self.embedding_dims)
            data = [
                {"object": "embedding", "index": i, "embedding": bag_of_words_vector(t, dims)}
                for i, t in enumerate(texts)
            ]
            return JSONResponse(
                {
                    "object": "list",
                    "data": data,
                    "model": body["model"],
                    "usage": {"prompt_tokens": 1, "total_tokens": 1},
                }
            )

        return Starlette(
            routes=[
                Route("/v1/chat/completions", chat, methods=["POST"]),
                Route("/v1/embeddings", embeddings, methods=["POST"]),
            ]
        )


def bag_of_words_vector(text: str, dims: int) -> list[float]:
    """A deterministic unit vector: texts sharing words point the same way."""
    vector = [0.0] * dims
    for word in text.lower().split():
        word = word.strip(".,!?")
        vector[int(hashlib.sha256(word.encode()).hexdigest(), 16) % dims] += 1.0
    norm = math.sqrt(sum(v * v for v in vector)) or 1.0
    return [v / norm for v in vector]


def facts_reply(*facts: str) -> Callable[[list[dict[str, Any]]], str]:
    """A reply in mem0's extraction format: {"memory": [{"text": ...}, ...]}."""
    return lambda _messages: json.dumps({"memory": [{"text": f} for f in facts]})
