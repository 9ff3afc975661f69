"""A fake Telegram Bot API on loopback (aiohttp): ``sendMessage`` is recorded, ``getUpdates`` long-polls
updates the test pushes. Enough of the real shapes for our client and for Alertmanager's (telebot:
JSON bodies, ``chat_id`` as a string, ``{"ok": true, "result": <Message>}``).

``FakeTelegram`` runs on the caller's event loop; ``FakeTelegramThread`` on a loop of its own in a
daemon thread, for tests that drive a process synchronously.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

TOKEN = "123456:TEST-token"
MAX_POLL_S = 1.0  # a long poll answers [] after this at the latest (the client may ask for more)


@dataclass(frozen=True)
class Sent:
    chat_id: int
    text: str
    at: float  # time.monotonic() when it arrived
    payload: dict[str, Any]


@dataclass
class FakeTelegram:
    token: str = TOKEN
    sent: list[Sent] = field(default_factory=list)
    offsets: list[int | None] = field(default_factory=list)  # every getUpdates offset asked for
    errors: deque[tuple[int, dict[str, Any]]] = field(default_factory=deque)  # next sendMessage answers
    calls: list[str] = field(default_factory=list)
    _updates: list[dict[str, Any]] = field(default_factory=list)
    _next_update: int = 1000
    _next_message: int = 1
    url: str = ""

    async def start(self) -> str:
        self._changed = asyncio.Condition()
        app = web.Application()
        app.router.add_post("/bot{token}/{method}", self._call)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        port = self._runner.addresses[0][1]
        self.url = f"http://127.0.0.1:{port}"
        return self.url

    async def stop(self) -> None:
        await self._runner.cleanup()

    # -- what a test does ------------------------------------------------------------------------

    async def push(self, chat_id: int, text: str, user_id: int = 42, username: str | None = "alice",
                   date: int | None = None, chat_type: str = "private") -> int:
        """A message someone sends the bot; returns its update_id."""
        update_id = self._next_update
        self._next_update += 1
        sender: dict[str, Any] = {"id": user_id, "is_bot": False, "first_name": "Test"}
        if username:
            sender["username"] = username
        self._updates.append({"update_id": update_id, "message": {
            "message_id": update_id, "from": sender, "chat": {"id": chat_id, "type": chat_type},
            "date": int(time.time()) if date is None else date, "text": text}})
        async with self._changed:
            self._changed.notify_all()
        return update_id

    def texts(self, chat_id: int | None = None) -> list[str]:
        return [s.text for s in list(self.sent) if chat_id is None or s.chat_id == chat_id]

    # -- the API ---------------------------------------------------------------------------------

    async def _call(self, request: web.Request) -> web.Response:
        method = request.match_info["method"]
        self.calls.append(method)
        if request.match_info["token"] != self.token:
            return web.json_response({"ok": False, "error_code": 401, "description": "Unauthorized"}, status=401)
        try:
            body = await request.json()
        except ValueError:
            body = dict(await request.post())
        if method == "sendMessage":
            return await self._send_message(body)
        if method == "getUpdates":
            return await self._get_updates(body)
        return web.json_response({"ok": False, "error_code": 404, "description": "Not Found"}, status=404)

    async def _send_message(self, body: dict[str, Any]) -> web.Response:
        if self.errors:
            status, answer = self.errors.popleft()
            return web.json_response(answer, status=status)
        chat_id = int(body["chat_id"])  # telebot sends it as a string
        text = str(body.get("text", ""))
        if not text or len(text) > 4096:
            return web.json_response({"ok": False, "error_code": 400,
                                      "description": "Bad Request: message text is empty or too long"}, status=400)
        self.sent.append(Sent(chat_id, text, time.monotonic(), body))
        message_id = self._next_message
        self._next_message += 1
        return web.json_response({"ok": True, "result": {
            "message_id": message_id, "date": int(time.time()), "chat": {"id": chat_id, "type": "private"},
            "from": {"id": 1, "is_bot": True, "first_name": "bot"}, "text": text}})

    async def _get_updates(self, body: dict[str, Any]) -> web.Response:
        offset = body.get("offset")
        offset = int(offset) if offset is not None else None
        self.offsets.append(offset)
        if offset is not None:  # confirmed: Telegram forgets them
            self._updates = [u for u in self._updates if u["update_id"] >= offset]
        wait_s = min(float(body.get("timeout", 0) or 0), MAX_POLL_S)
        if not self._updates and wait_s > 0:
            async with self._changed:
                try:
                    await asyncio.wait_for(self._changed.wait(), wait_s)
                except asyncio.TimeoutError:
                    pass
        return web.json_response({"ok": True, "result": list(self._updates)})


class FakeTelegramThread:
    """The fake on its own loop in a daemon thread; ``call`` runs a coroutine there."""

    def __init__(self, token: str = TOKEN) -> None:
        self.api = FakeTelegram(token=token)
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="fake-telegram", daemon=True)

    def start(self) -> str:
        self._thread.start()
        return asyncio.run_coroutine_threadsafe(self.api.start(), self._loop).result(10)

    def stop(self) -> None:
        asyncio.run_coroutine_threadsafe(self.api.stop(), self._loop).result(10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)
        self._loop.close()

    def push(self, chat_id: int, text: str, **kw: Any) -> int:
        return asyncio.run_coroutine_threadsafe(self.api.push(chat_id, text, **kw), self._loop).result(10)

    @property
    def url(self) -> str:
        return self.api.url
