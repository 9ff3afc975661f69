"""The Bot API client against the loopback fake: what each answer means (sent, 429 with its
retry_after, 5xx and no answer as Unavailable, 4xx as Refused), the token never in an error, and
getUpdates' offset confirming what was handled."""

from __future__ import annotations

import asyncio
from typing import Any, Awaitable, Callable

import pytest

from services.trader_notifier.app.telegram import Refused, RetryAfter, TelegramClient, Unavailable
from tests.notifier.fake_telegram import TOKEN, FakeTelegram
from tradestack.embedded_redis import free_port


def with_fake(test: Callable[[FakeTelegram, TelegramClient], Awaitable[None]]) -> None:
    async def run() -> None:
        fake = FakeTelegram()
        url = await fake.start()
        client = TelegramClient(url, TOKEN, timeout_s=5)
        try:
            await test(fake, client)
        finally:
            await client.close()
            await fake.stop()

    asyncio.run(asyncio.wait_for(run(), 20))


def test_send_message_and_the_answers_that_mean_wait_retry_or_give_up() -> None:
    async def test(fake: FakeTelegram, client: TelegramClient) -> None:
        await client.send_message(111, "hello")
        assert [(s.chat_id, s.text) for s in fake.sent] == [(111, "hello")]
        assert fake.sent[0].payload == {"chat_id": 111, "text": "hello", "disable_web_page_preview": True}
        fake.errors.append((429, {"ok": False, "error_code": 429, "description": "Too Many Requests: retry after 3",
                                  "parameters": {"retry_after": 3}}))
        with pytest.raises(RetryAfter) as limited:
            await client.send_message(111, "again")
        assert limited.value.retry_after_s == 3.0
        fake.errors.append((502, {"ok": False, "error_code": 502, "description": "Bad Gateway"}))
        with pytest.raises(Unavailable):
            await client.send_message(111, "again")
        fake.errors.append((403, {"ok": False, "error_code": 403, "description": "Forbidden: bot was blocked"}))
        with pytest.raises(Refused) as refused:
            await client.send_message(111, "again")
        assert refused.value.code == 403

    with_fake(test)


def test_a_wrong_token_is_refused_and_never_shown() -> None:
    async def test(fake: FakeTelegram, client: TelegramClient) -> None:
        wrong = TelegramClient(client.api_url, "999:wrong-secret")
        try:
            with pytest.raises(Refused) as err:
                await wrong.send_message(111, "x")
        finally:
            await wrong.close()
        assert err.value.code == 401 and "wrong-secret" not in str(err.value)

    with_fake(test)


def test_no_server_is_unavailable_without_the_token_in_the_error() -> None:
    async def run() -> None:
        client = TelegramClient(f"http://127.0.0.1:{free_port()}", "555:very-secret", timeout_s=2)
        try:
            with pytest.raises(Unavailable) as err:
                await client.send_message(1, "x")
        finally:
            await client.close()
        assert "very-secret" not in str(err.value)

    asyncio.run(run())


def test_get_updates_long_polls_and_the_offset_confirms() -> None:
    async def test(fake: FakeTelegram, client: TelegramClient) -> None:
        assert await client.get_updates(None, 0) == []
        poll = asyncio.ensure_future(client.get_updates(None, 5))
        while not fake.offsets[1:]:  # the long poll has reached the server
            await asyncio.sleep(0.01)
        update_id = await fake.push(111, "/status")
        updates: list[dict[str, Any]] = await poll
        assert [u["update_id"] for u in updates] == [update_id]
        assert updates[0]["message"]["text"] == "/status"
        assert await client.get_updates(update_id + 1, 0) == []  # confirmed: not delivered again
        assert fake.offsets[-1] == update_id + 1

    with_fake(test)
