"""A small Telegram Bot API client (aiohttp): ``sendMessage`` and ``getUpdates``, nothing else.

Errors say what to do next:
- ``RetryAfter``: 429 Too Many Requests; wait ``retry_after`` seconds (Telegram's own figure);
- ``Unavailable``: no answer, a timeout, a 5xx or an unreadable body; retry with backoff;
- ``Refused``: any other refusal (400 bad request, 401 bad token, 403 the bot was blocked or
  removed from the chat, 409 another getUpdates/webhook); retrying the same call cannot help.

The bot token is part of every URL; it never reaches a log line (errors are scrubbed of it).
"""

from __future__ import annotations

import asyncio
from typing import Any

import aiohttp

DEFAULT_API_URL = "https://api.telegram.org"


class TelegramError(Exception):
    pass


class RetryAfter(TelegramError):
    def __init__(self, retry_after_s: float, description: str) -> None:
        super().__init__(f"429: {description} (retry after {retry_after_s} s)")
        self.retry_after_s = retry_after_s


class Unavailable(TelegramError):
    pass


class Refused(TelegramError):
    def __init__(self, code: int, description: str) -> None:
        super().__init__(f"{code}: {description}")
        self.code = code


class TelegramClient:
    def __init__(self, api_url: str, token: str, timeout_s: float = 10.0) -> None:
        self.api_url = api_url.rstrip("/")
        self._token = token
        self.timeout_s = timeout_s
        self._session: aiohttp.ClientSession | None = None

    def scrub(self, text: str) -> str:
        return text.replace(self._token, "<token>") if self._token else text

    async def call(self, method: str, payload: dict[str, Any], timeout_s: float | None = None) -> Any:
        """POST one Bot API method with a JSON body; its ``result``, or one of the errors above."""
        if self._session is None:
            self._session = aiohttp.ClientSession()
        url = f"{self.api_url}/bot{self._token}/{method}"
        timeout = aiohttp.ClientTimeout(total=timeout_s or self.timeout_s)
        try:
            async with self._session.post(url, json=payload, timeout=timeout) as resp:
                status = resp.status
                try:
                    body = await resp.json(content_type=None)
                except (ValueError, aiohttp.ContentTypeError):
                    body = None
        except (aiohttp.ClientError, asyncio.TimeoutError, OSError) as exc:
            raise Unavailable(self.scrub(f"{method}: {type(exc).__name__}: {exc}")) from None
        if isinstance(body, dict) and body.get("ok") is True:
            return body.get("result")
        description = self.scrub(str(body.get("description", "")) if isinstance(body, dict) else f"HTTP {status}")
        code = int(body.get("error_code", status)) if isinstance(body, dict) else status
        if code == 429:
            params = body.get("parameters") if isinstance(body, dict) else None
            retry = params.get("retry_after") if isinstance(params, dict) else None
            raise RetryAfter(float(retry) if isinstance(retry, (int, float)) else 1.0, description)
        if code >= 500 or body is None:
            raise Unavailable(f"{method}: {code}: {description}")
        raise Refused(code, f"{method}: {description}")

    async def send_message(self, chat_id: int, text: str) -> None:
        await self.call("sendMessage", {"chat_id": chat_id, "text": text, "disable_web_page_preview": True})

    async def get_updates(self, offset: int | None, timeout_s: int) -> list[dict[str, Any]]:
        """Long poll: waits up to ``timeout_s`` for updates after ``offset`` (which confirms the earlier ones)."""
        payload: dict[str, Any] = {"timeout": timeout_s, "allowed_updates": ["message", "channel_post"]}
        if offset is not None:
            payload["offset"] = offset
        result = await self.call("getUpdates", payload, timeout_s=timeout_s + self.timeout_s)
        return [u for u in result if isinstance(u, dict)] if isinstance(result, list) else []

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None
