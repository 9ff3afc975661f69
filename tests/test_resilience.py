"""Real processes under real failures: killed mid-message, SIGTERM mid-stream, Redis restarted."""

from __future__ import annotations

import signal
import subprocess

import redis

from tests.conftest import spawn, wait_until
from tests.stubs import event
from tradestack.embedded_redis import EmbeddedRedis, free_port
from tradestack.messages import decode, derive_id, encode

IN, OUT = "test:in", "test:out"
SCRIPT = ["-m", "bench.passthrough"]


def publish(client: redis.Redis, n: int, start: int = 0) -> list[str]:
    ids = []
    for i in range(start, start + n):
        msg = event(i)
        ids.append(msg.id)
        client.xadd(IN, encode(msg))
    return ids


def out_ids(client: redis.Redis) -> list[str]:
    return [decode(fields).id for _, fields in client.xrange(OUT)]


def env(url: str, **extra: str) -> dict[str, str]:
    return {"REDIS_URL": url, "METRICS_PORT": str(free_port()), "BLOCK_MS": "100", **extra}


def test_consumer_killed_mid_message_is_taken_over(redis_url: str, rclient: redis.Redis) -> None:
    sent = publish(rclient, 3)
    victim = spawn(SCRIPT, env(redis_url, HANG_ON=sent[1]))
    try:
        wait_until(lambda: rclient.get("test:in_handler") == sent[1].encode(), what="victim inside the handler")
        victim.kill()  # SIGKILL while the message is in hand
        victim.wait(5)
    finally:
        if victim.poll() is None:
            victim.kill()
    # The batch commits as a whole, so the victim wrote nothing and all three stay pending.
    assert out_ids(rclient) == []
    assert rclient.xpending(IN, "passthrough")["pending"] == 3
    heir = spawn(SCRIPT, env(redis_url, CLAIM_IDLE_MS="200", CLAIM_EVERY_S="0.1"))
    try:
        wait_until(lambda: rclient.xlen(OUT) == 3, what="the heir to handle the orphaned entry")
    finally:
        heir.send_signal(signal.SIGTERM)
        heir.communicate(timeout=5)
    assert sorted(out_ids(rclient)) == sorted(derive_id(i, "out") for i in sent)
    assert rclient.xpending(IN, "passthrough")["pending"] == 0


def test_sigterm_finishes_the_message_in_hand_acks_and_exits_0(redis_url: str, rclient: redis.Redis) -> None:
    sent = publish(rclient, 200)
    proc = spawn(SCRIPT, env(redis_url, SLOW_MS="20", READ_COUNT="10"))
    wait_until(lambda: rclient.xlen(OUT) >= 15, what="some progress")
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=5)  # must exit within 5 s
    assert proc.returncode == 0, err.decode()
    done = rclient.xlen(OUT)
    assert 15 <= done < 200
    assert rclient.xpending(IN, "passthrough")["pending"] == 0, "everything read was finished and acked"
    # A new instance picks up exactly where the first stopped: nothing lost, nothing twice.
    proc2 = spawn(SCRIPT, env(redis_url))
    try:
        wait_until(lambda: rclient.xlen(OUT) == 200, what="the rest handled")
    finally:
        proc2.send_signal(signal.SIGTERM)
        proc2.communicate(timeout=5)
    assert sorted(out_ids(rclient)) == sorted(derive_id(i, "out") for i in sent)


def test_redis_restart_under_a_running_service_loses_nothing_acknowledged(own_redis: EmbeddedRedis) -> None:
    client = redis.Redis.from_url(own_redis.url)
    first = publish(client, 100)
    proc = spawn(SCRIPT, env(own_redis.url))
    try:
        wait_until(lambda: client.xlen(OUT) == 100, what="first batch handled")
        own_redis.stop()  # SHUTDOWN: the AOF is fsynced
        client.close()
        restarted = EmbeddedRedis(own_redis.data_dir, port=own_redis.port).start()
        own_redis.proc = restarted.proc
        client = redis.Redis.from_url(own_redis.url)
        assert client.xlen(OUT) == 100, "acknowledged outputs survived the restart"
        second = publish(client, 100, start=100)
        wait_until(lambda: client.xlen(OUT) == 200, timeout_s=20, what="service recovered and handled the rest")
    finally:
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=5)
    assert proc.returncode == 0, err.decode()
    assert sorted(out_ids(client)) == sorted(derive_id(i, "out") for i in first + second)
    assert client.xpending(IN, "passthrough")["pending"] == 0
    text = out.decode()
    assert "redis_unavailable" in text and "Traceback" not in text + err.decode()
    client.close()


def test_redis_killed_hard_restarts_from_aof_and_the_service_resumes(own_redis: EmbeddedRedis) -> None:
    """SIGKILL of redis-server (not a clean shutdown). With appendfsync everysec the last second
    may be lost; what the service acknowledged before an fsync is not, and it keeps going."""
    client = redis.Redis.from_url(own_redis.url)
    first = publish(client, 50)
    proc = spawn(SCRIPT, env(own_redis.url))
    try:
        wait_until(lambda: client.xlen(OUT) == 50, what="first batch handled")
        client.execute_command("BGREWRITEAOF")  # a synchronous point: the AOF now holds the outputs
        wait_until(lambda: client.info("persistence")["aof_rewrite_in_progress"] == 0, what="AOF rewrite")
        client.close()
        own_redis.kill()
        restarted = EmbeddedRedis(own_redis.data_dir, port=own_redis.port).start()
        own_redis.proc = restarted.proc
        client = redis.Redis.from_url(own_redis.url)
        assert client.xlen(OUT) == 50
        second = publish(client, 50, start=50)
        wait_until(lambda: client.xlen(OUT) == 100, timeout_s=20, what="service resumed")
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.communicate(timeout=5)
    assert sorted(out_ids(client)) == sorted(derive_id(i, "out") for i in first + second)
    client.close()


def test_subprocess_helper_never_leaks(redis_url: str) -> None:
    """The pass-through service exits 2 on a bad setting like every other process."""
    proc = spawn(SCRIPT, {"REDIS_URL": redis_url, "SLOW_MS": "soon"})
    _, err = proc.communicate(timeout=30)
    assert proc.returncode == 2 and b"SLOW_MS='soon'" in err
    assert isinstance(proc, subprocess.Popen)
