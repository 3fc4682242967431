"""A fake OpenAI-compatible API (chat completions and embeddings) speaking the real wire format."""

from __future__ import annotations

import json
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

        return Starlette(routes=[Route("/v1/chat/completions", chat, methods=["POST"])])


def facts_reply(*facts: str) -> Callable[[list[dict[str, Any]]], str]:
    """A reply in mem0's extraction format: {"memory": [{"text": ...}, ...]}."""
    return lambda _messages: json.dumps({"memory": [{"text": f} for f in facts]})
