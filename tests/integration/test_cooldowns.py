"""Model health and cooldowns on the real Redis, shared by every worker process."""

from __future__ import annotations

import uuid

import redis

from llm_router.workers.cooldown import RedisCooldowns

URL = "redis://127.0.0.1:6379/15"


def test_a_model_trips_when_more_than_half_of_its_calls_in_the_window_failed() -> None:
    client = redis.Redis.from_url(URL)
    model = f"model-{uuid.uuid4().hex[:8]}"
    one, other = RedisCooldowns(client, min_calls=4), RedisCooldowns(redis.Redis.from_url(URL), min_calls=4)
    assert [one.record(model, ok) for ok in (True, False, False)] == [False, False, False]
    assert other.record(model, False) is True  # 3 of 4 calls failed, counted across processes
    assert one.record(model, True) is False  # a success never trips
    assert other.record(model, False) is True  # 4 of 6


def test_many_successes_keep_a_failure_rate_low_and_cost_no_read() -> None:
    client = redis.Redis.from_url(URL)
    model = f"model-{uuid.uuid4().hex[:8]}"
    cooldowns = RedisCooldowns(client, min_calls=4)
    for _ in range(500):
        cooldowns.record(model, True)
    assert [cooldowns.record(model, False) for _ in range(3)] == [False, False, False]  # 3 of 503
    assert client.zcard(f"llm-router:health:{model}") == 503
    assert client.zcard(f"llm-router:health-failed:{model}") == 3


def test_a_cooldown_is_seen_by_every_process_until_it_ends() -> None:
    model = f"model-{uuid.uuid4().hex[:8]}"
    one, other = RedisCooldowns(redis.Redis.from_url(URL)), RedisCooldowns(redis.Redis.from_url(URL))
    assert other.remaining_s(model) == 0.0
    one.cool(model, 30.0)
    assert 29.0 < other.remaining_s(model) <= 30.0


def test_the_successes_of_a_flush_count_as_one_by_one() -> None:
    """The event loop counts a flush's answers in one round trip: as many calls, each model its own."""
    client = redis.Redis.from_url(URL)
    chat, tei = (f"model-{uuid.uuid4().hex[:8]}" for _ in range(2))
    cooldowns = RedisCooldowns(client, min_calls=4)
    cooldowns.record_successes([chat, tei, chat, chat])
    assert (client.zcard(f"llm-router:health:{chat}"), client.zcard(f"llm-router:health:{tei}")) == (3, 1)
    assert [cooldowns.record(chat, False) for _ in range(3)] == [False, False, False]  # 3 of 6: not more than half
    assert cooldowns.record(chat, False) is True  # 4 of 7
