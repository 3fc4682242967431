"""A fake Slack Web API speaking the real wire format, for slack-sdk's real ``AsyncWebClient``.

Serves ``auth.test``, ``conversations.list``, ``conversations.history``,
``conversations.replies`` and ``users.info`` with cursor pagination, threads (with
``reply_count``/``latest_reply`` on parents, tombstones for deleted parents), edits,
deletes, an archived channel, a channel the bot is not in, and 429s with ``Retry-After``.
Tests change the workspace between syncs with ``post``, ``edit`` and ``delete``.
"""

from __future__ import annotations

import base64
import threading
import time
from dataclasses import dataclass, field
from typing import Any

import anyio
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

TOKEN = "xoxb-fake-token"
TEAM_ID = "T0FAKE"


@dataclass
class FakeChannel:
    id: str
    name: str
    is_member: bool = True
    is_archived: bool = False
    is_private: bool = False
    messages: dict[str, dict[str, Any]] = field(default_factory=dict)  # ts -> message


@dataclass
class Call:
    method: str
    params: dict[str, str]
    at: float
    status: int


class FakeSlack:
    """One workspace. Thread-safe enough for a test thread and the server thread."""

    def __init__(self, page_size: int = 3) -> None:
        self.page_size = page_size
        self.token = TOKEN
        self.channels: dict[str, FakeChannel] = {}
        self.users: dict[str, dict[str, Any]] = {}
        self.calls: list[Call] = []
        self.fail_with: int | None = None  # answer every call with this HTTP status (Slack down)
        self.early_requests = 0  # requests that came before a Retry-After had passed
        self._rate_limits: dict[str, list[int]] = {}  # method -> Retry-After of the next 429s
        self._penalty_until: dict[str, float] = {}
        self._gates: dict[str, threading.Event] = {}
        self._gate_params: dict[str, dict[str, str]] = {}
        self.entered: dict[str, threading.Event] = {}
        self._clock = time.time() - 3 * 86400
        self._lock = threading.Lock()

    # ------------------------------------------------------------ workspace changes

    def add_user(self, user_id: str, name: str, display_name: str) -> None:
        self.users[user_id] = {
            "id": user_id,
            "team_id": TEAM_ID,
            "name": name,
            "real_name": display_name,
            "is_bot": False,
            "profile": {"display_name": display_name, "real_name": display_name},
        }

    def add_channel(
        self,
        channel_id: str,
        name: str,
        is_member: bool = True,
        is_archived: bool = False,
        is_private: bool = False,
    ) -> FakeChannel:
        channel = FakeChannel(channel_id, name, is_member, is_archived, is_private)
        self.channels[channel_id] = channel
        return channel

    def next_ts(self, at: float | None = None) -> str:
        with self._lock:
            if at is None:
                self._clock += 1.0
                at = self._clock
            ts = f"{at:.6f}"
            while any(ts in c.messages for c in self.channels.values()):
                at += 0.000001
                ts = f"{at:.6f}"
            return ts

    def post(
        self,
        channel: str,
        user: str | None,
        text: str,
        *,
        thread_ts: str | None = None,
        at: float | None = None,
        **extra: Any,
    ) -> str:
        """Add a message (``at``: its time as epoch seconds; default: shortly after the last one)."""
        ts = self.next_ts(at)
        message: dict[str, Any] = {"type": "message", "ts": ts, "text": text, **extra}
        if user is not None:
            message["user"] = user
        if thread_ts is not None:
            message["thread_ts"] = thread_ts
        self.channels[channel].messages[ts] = message
        return ts

    def edit(self, channel: str, ts: str, text: str) -> None:
        message = self.channels[channel].messages[ts]
        message["text"] = text
        message["edited"] = {"user": message.get("user"), "ts": self.next_ts()}

    def delete(self, channel: str, ts: str) -> None:
        del self.channels[channel].messages[ts]

    # ------------------------------------------------------------ misbehaviour

    def rate_limit(self, method: str, retry_after: int = 1, times: int = 1) -> None:
        """Answer the next ``times`` calls of ``method`` with 429 and ``Retry-After``."""
        self._rate_limits.setdefault(method, []).extend([retry_after] * times)

    def hold(self, method: str, **params: str) -> threading.Event:
        """Make calls of ``method`` (with these params) wait until the returned event is set.

        ``entered[method]`` is set when the first such call arrives.
        """
        self._gates[method] = threading.Event()
        self._gate_params[method] = params
        self.entered[method] = threading.Event()
        return self._gates[method]

    def count(self, method: str) -> int:
        return sum(1 for c in self.calls if c.method == method and c.status == 200)

    # ------------------------------------------------------------ the API

    def app(self) -> Starlette:
        return Starlette(routes=[Route("/api/{method}", self._dispatch, methods=["GET", "POST"])])

    async def _dispatch(self, request: Request) -> JSONResponse:
        method = request.path_params["method"]
        params = dict(request.query_params)
        if request.method == "POST":
            form = await request.form()
            params.update({k: str(v) for k, v in form.items()})
        now = time.monotonic()
        if method in self._gates and self._gate_params[method].items() <= params.items():
            self.entered[method].set()
            await anyio.to_thread.run_sync(self._gates[method].wait)
        if self.fail_with is not None:
            return self._answer(method, params, {"ok": False, "error": "fatal_error"}, self.fail_with)
        if now < self._penalty_until.get(method, 0.0):
            self.early_requests += 1
            return self._answer(
                method, params, {"ok": False, "error": "ratelimited"}, 429, {"Retry-After": "1"}
            )
        pending = self._rate_limits.get(method)
        if pending:
            retry_after = pending.pop(0)
            self._penalty_until[method] = now + retry_after
            return self._answer(
                method, params, {"ok": False, "error": "ratelimited"}, 429, {"Retry-After": str(retry_after)}
            )
        if request.headers.get("authorization") != f"Bearer {self.token}":
            return self._answer(method, params, {"ok": False, "error": "invalid_auth"})
        handler = {
            "auth.test": self._auth_test,
            "conversations.list": self._conversations_list,
            "conversations.history": self._history,
            "conversations.replies": self._replies,
            "users.info": self._users_info,
        }.get(method)
        body = handler(params) if handler else {"ok": False, "error": "unknown_method"}
        return self._answer(method, params, body)

    def _answer(
        self, method: str, params: dict[str, str], body: dict[str, Any], status: int = 200,
        headers: dict[str, str] | None = None,
    ) -> JSONResponse:  # fmt: skip
        self.calls.append(Call(method, params, time.monotonic(), status))
        return JSONResponse(body, status_code=status, headers=headers)

    def _page(self, items: list[Any], params: dict[str, str], key: str, **extra: Any) -> dict[str, Any]:
        start = int(base64.b64decode(params["cursor"]).decode()) if params.get("cursor") else 0
        size = min(int(params.get("limit") or 100), self.page_size)
        chunk = items[start : start + size]
        more = start + size < len(items)
        cursor = base64.b64encode(str(start + size).encode()).decode() if more else ""
        return {
            "ok": True,
            key: chunk,
            "has_more": more,
            "response_metadata": {"next_cursor": cursor},
            **extra,
        }

    def _auth_test(self, _params: dict[str, str]) -> dict[str, Any]:
        return {
            "ok": True,
            "url": "https://fake-team.slack.com/",
            "team": "Fake Team",
            "user": "memorybot",
            "team_id": TEAM_ID,
            "user_id": "UBOT",
            "bot_id": "BBOT",
        }

    def _conversations_list(self, params: dict[str, str]) -> dict[str, Any]:
        channels = [
            {
                "id": c.id,
                "name": c.name,
                "is_channel": not c.is_private,
                "is_group": False,
                "is_private": c.is_private,
                "is_archived": c.is_archived,
                "is_member": c.is_member,
            }
            for c in self.channels.values()
            if params.get("exclude_archived") not in ("true", "1") or not c.is_archived
        ]
        return self._page(channels, params, "channels")

    def _channel(self, params: dict[str, str]) -> FakeChannel | dict[str, Any]:
        channel = self.channels.get(params.get("channel", ""))
        if channel is None:
            return {"ok": False, "error": "channel_not_found"}
        if not channel.is_member and channel.is_private:
            return {"ok": False, "error": "channel_not_found"}
        if not channel.is_member:
            return {"ok": False, "error": "not_in_channel"}
        return channel

    @staticmethod
    def _threads(channel: FakeChannel) -> dict[str, list[str]]:
        """thread_ts -> its replies' ts, oldest first (one pass, so big benchmark workspaces stay cheap)."""
        threads: dict[str, list[str]] = {}
        for ts, m in channel.messages.items():
            parent = m.get("thread_ts")
            if parent is not None and parent != ts:
                threads.setdefault(parent, []).append(ts)
        for replies in threads.values():
            replies.sort(key=float)
        return threads

    @staticmethod
    def _with_thread_info(
        channel: FakeChannel, message: dict[str, Any], threads: dict[str, list[str]]
    ) -> dict[str, Any]:
        replies = threads.get(message["ts"], [])
        if not replies:
            return dict(message)
        return {
            **message,
            "thread_ts": message["ts"],
            "reply_count": len(replies),
            "latest_reply": replies[-1],
            "reply_users": sorted({channel.messages[r].get("user", "") for r in replies}),
        }

    def _history(self, params: dict[str, str]) -> dict[str, Any]:
        channel = self._channel(params)
        if not isinstance(channel, FakeChannel):
            return channel
        oldest = float(params.get("oldest") or 0)
        latest = float(params.get("latest") or 1e12)
        inclusive = params.get("inclusive") in ("true", "1")
        top: dict[str, dict[str, Any]] = {}
        threads = self._threads(channel)
        for ts, m in channel.messages.items():
            parent = m.get("thread_ts")
            if parent is None or parent == ts or m.get("subtype") == "thread_broadcast":
                top[ts] = self._with_thread_info(channel, m, threads)
            elif parent not in channel.messages:  # replies of a deleted parent keep a tombstone
                top[parent] = {
                    "type": "message",
                    "subtype": "tombstone",
                    "ts": parent,
                    "thread_ts": parent,
                    "text": "This message was deleted.",
                    "reply_count": 1,
                }
        chosen = [
            m
            for ts, m in top.items()
            if (float(ts) >= oldest if inclusive else float(ts) > oldest) and float(ts) <= latest
        ]
        chosen.sort(key=lambda m: float(m["ts"]), reverse=True)
        return self._page(chosen, params, "messages")

    def _replies(self, params: dict[str, str]) -> dict[str, Any]:
        channel = self._channel(params)
        if not isinstance(channel, FakeChannel):
            return channel
        thread_ts = params.get("ts", "")
        replies = [
            m for ts, m in channel.messages.items() if m.get("thread_ts") == thread_ts and ts != thread_ts
        ]
        parent = channel.messages.get(thread_ts)
        if parent is None and not replies:
            return {"ok": False, "error": "thread_not_found"}
        if parent is None:
            parent = {
                "type": "message",
                "subtype": "tombstone",
                "ts": thread_ts,
                "text": "This message was deleted.",
            }
        oldest = float(params.get("oldest") or 0)
        threads = {thread_ts: sorted((m["ts"] for m in replies), key=float)}
        messages = [self._with_thread_info(channel, parent, threads)] + sorted(
            (m for m in replies if float(m["ts"]) > oldest), key=lambda m: float(m["ts"])
        )
        return self._page(messages, params, "messages")

    def _users_info(self, params: dict[str, str]) -> dict[str, Any]:
        user = self.users.get(params.get("user", ""))
        if user is None:
            return {"ok": False, "error": "user_not_found"}
        return {"ok": True, "user": user}
