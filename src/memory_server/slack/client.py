"""The few Slack Web API calls the sync needs, over slack-sdk's ``AsyncWebClient``.

Rate limits: slack-sdk's retry handlers sleep for the ``Retry-After`` a 429 names and
retry (and retry 500/503 and dropped connections once or twice); when they give up the
call raises ``SlackError`` and the sync records it and tries again at the next interval.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

# Slack asks for at most 200 items per page of history and lists.
PAGE_SIZE = 200

# What a person can do about the errors Slack answers most often.
_ADVICE = {
    "invalid_auth": "the Slack token is invalid: check SLACK_BOT_TOKEN",
    "not_authed": "no Slack token was sent: set SLACK_BOT_TOKEN",
    "token_revoked": "the Slack token was revoked: install the app again and update SLACK_BOT_TOKEN",
    "account_inactive": "the Slack token belongs to a deactivated app or user: update SLACK_BOT_TOKEN",
    "missing_scope": "the Slack app lacks a scope: add channels:history, channels:read, groups:history, "
    "groups:read and users:read, then reinstall it",
    "not_in_channel": "the bot is not a member of this channel: invite it with /invite @your-bot",
    "channel_not_found": "the channel does not exist or the bot cannot see it: invite the bot, "
    "or fix SLACK_CHANNELS",
    "ratelimited": "Slack kept answering 429 (rate limited) after the retries; will try again next run",
}


class SlackError(Exception):
    """A Slack call failed; ``message`` says why in words a person can act on."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


@dataclass(frozen=True)
class Team:
    """Who the token is: the workspace and the bot user."""

    team_id: str
    team_name: str
    url: str
    bot_user_id: str


@dataclass(frozen=True)
class Channel:
    """A conversation as ``conversations.list`` describes it."""

    id: str
    name: str
    is_member: bool
    is_archived: bool
    is_private: bool


def _failure(exc: Exception, method: str) -> SlackError:
    from slack_sdk.errors import SlackApiError

    if isinstance(exc, SlackApiError):
        code = str(exc.response.get("error") or f"http_{exc.response.status_code}")
        if exc.response.status_code == 429:
            code = "ratelimited"
        advice = _ADVICE.get(code)
        if advice is None and exc.response.status_code >= 500:
            advice = f"Slack answered HTTP {exc.response.status_code} to {method}; will try again next run"
        return SlackError(code, advice or f"Slack refused {method}: {code}")
    return SlackError(
        "unreachable",
        f"cannot reach the Slack API ({type(exc).__name__}); check SLACK_API_BASE_URL and the network",
    )


class SlackClient:
    """Reads a workspace: identity, channels, history, thread replies and user names (cached)."""

    def __init__(self, token: str, base_url: str, max_retries: int = 5, timeout: int = 30) -> None:
        # slack-sdk is imported where a sync uses it: with aiohttp it takes 0.15 s of every
        # start, and most servers never sync Slack.
        from slack_sdk.http_retry.builtin_async_handlers import (
            AsyncConnectionErrorRetryHandler,
            AsyncRateLimitErrorRetryHandler,
            AsyncServerErrorRetryHandler,
        )
        from slack_sdk.web.async_client import AsyncWebClient

        self.web = AsyncWebClient(
            token=token,
            base_url=base_url,
            timeout=timeout,
            retry_handlers=[
                AsyncConnectionErrorRetryHandler(max_retry_count=2),
                AsyncRateLimitErrorRetryHandler(max_retry_count=max_retries),
                AsyncServerErrorRetryHandler(max_retry_count=2),
            ],
        )
        self._names: dict[str, str] = {}

    async def _call(self, method: str, **params: Any) -> dict[str, Any]:
        from slack_sdk.errors import SlackApiError, SlackClientError

        try:
            response = await self.web.api_call(method, http_verb="GET", params=params)
        except (SlackApiError, SlackClientError, OSError, TimeoutError) as exc:
            raise _failure(exc, method) from exc
        data = response.data
        if not isinstance(data, dict):
            raise SlackError("bad_response", f"Slack answered {method} with something that is not JSON")
        return data

    async def _pages(self, method: str, **params: Any) -> AsyncIterator[dict[str, Any]]:
        cursor = ""
        while True:
            page = await self._call(method, **params, **({"cursor": cursor} if cursor else {}))
            yield page
            cursor = str((page.get("response_metadata") or {}).get("next_cursor") or "")
            if not cursor:
                return

    async def team(self) -> Team:
        """``auth.test``: the workspace and bot behind the token (fails fast on a bad token)."""
        data = await self._call("auth.test")
        return Team(
            team_id=str(data.get("team_id", "")),
            team_name=str(data.get("team", "")),
            url=str(data.get("url", "")),
            bot_user_id=str(data.get("user_id", "")),
        )

    async def channels(self) -> list[Channel]:
        """Public and private channels the bot can see, archived ones included."""
        found: list[Channel] = []
        async for page in self._pages(
            "conversations.list",
            types="public_channel,private_channel",
            exclude_archived="false",
            limit=PAGE_SIZE,
        ):
            for c in page.get("channels", []):
                found.append(
                    Channel(
                        id=str(c["id"]),
                        name=str(c.get("name", c["id"])),
                        is_member=bool(c.get("is_member", False)),
                        is_archived=bool(c.get("is_archived", False)),
                        is_private=bool(c.get("is_private", False)),
                    )
                )
        return found

    async def history(self, channel: str, oldest: str) -> list[dict[str, Any]]:
        """Every top-level message of ``channel`` after ``oldest`` (all pages), oldest first."""
        messages: list[dict[str, Any]] = []
        async for page in self._pages(
            "conversations.history", channel=channel, oldest=oldest, inclusive="false", limit=PAGE_SIZE
        ):
            messages.extend(page.get("messages", []))
        return sorted(messages, key=lambda m: ts_key(str(m.get("ts", "0"))))

    async def replies(self, channel: str, thread_ts: str) -> list[dict[str, Any]] | None:
        """The whole thread (parent first), or ``None`` if the parent is gone."""
        messages: list[dict[str, Any]] = []
        try:
            async for page in self._pages(
                "conversations.replies", channel=channel, ts=thread_ts, limit=PAGE_SIZE
            ):
                messages.extend(page.get("messages", []))
        except SlackError as exc:
            if exc.code == "thread_not_found":
                return None
            raise
        return sorted(messages, key=lambda m: ts_key(str(m.get("ts", "0"))))

    async def user_name(self, user_id: str) -> str:
        """The display name of ``user_id`` (``users.info``, cached for the client's life)."""
        if user_id not in self._names:
            try:
                user = (await self._call("users.info", user=user_id)).get("user") or {}
            except SlackError as exc:
                if exc.code != "user_not_found":
                    raise
                user = {}
            profile = user.get("profile") or {}
            self._names[user_id] = str(
                profile.get("display_name")
                or profile.get("real_name")
                or user.get("real_name")
                or user.get("name")
                or user_id
            )
        return self._names[user_id]

    async def close(self) -> None:
        """Nothing to release: slack-sdk opens one aiohttp session per call."""


def ts_key(ts: str) -> tuple[int, int]:
    """A Slack ts ("1700000000.000100") as a sortable pair."""
    seconds, _, fraction = ts.partition(".")
    try:
        return int(seconds), int(fraction.ljust(6, "0")[:6] or 0)
    except ValueError:
        return 0, 0
