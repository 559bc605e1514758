"""The webhook policy is pure: which addresses a callback may reach, the signature, the retry delays."""

from __future__ import annotations

import ipaddress

import pytest

from llm_router.broker.webhooks import (
    CallbackRefused,
    address_allowed,
    allowed_networks,
    check_callback_url,
    retry_delay_s,
    signature,
    verify_signature,
)
from llm_router.tasks.errors import InvalidRequest


@pytest.mark.parametrize(
    ("address", "public"),
    [
        ("8.8.8.8", True),
        ("2606:4700:4700::1111", True),
        ("127.0.0.1", False),
        ("10.0.0.1", False),
        ("172.16.5.4", False),
        ("192.168.1.1", False),
        ("169.254.169.254", False),  # link-local: a cloud's metadata service
        ("100.64.0.1", False),  # carrier-grade NAT
        ("0.0.0.0", False),
        ("224.0.0.1", False),  # multicast
        ("::1", False),
        ("fd00::1", False),
        ("::ffff:10.0.0.1", False),  # an IPv4-mapped private address
        ("::ffff:8.8.8.8", True),
    ],
)
def test_only_public_addresses_are_allowed_by_default(address: str, public: bool) -> None:
    assert address_allowed(ipaddress.ip_address(address), []) is public


def test_an_operator_allows_networks_by_address_or_cidr() -> None:
    allowed = allowed_networks(" 10.1.0.0/16, 127.0.0.1 ,")
    assert address_allowed(ipaddress.ip_address("10.1.200.3"), allowed)
    assert address_allowed(ipaddress.ip_address("127.0.0.1"), allowed)
    assert not address_allowed(ipaddress.ip_address("10.2.0.1"), allowed)
    with pytest.raises(InvalidRequest, match="webhook_allowed_networks: 'not-a-net'"):
        allowed_networks("not-a-net")


def test_submission_checks_literal_addresses_and_localhost_and_leaves_names_to_delivery() -> None:
    for url in ("http://127.0.0.1/x", "http://localhost:8000/x", "http://app.localhost/x", "http://[fd00::1]/x"):
        with pytest.raises(CallbackRefused, match="callback_url"):
            check_callback_url(url, [])
    check_callback_url("http://localhost:8000/x", allowed_networks("127.0.0.0/8"))
    check_callback_url("https://hooks.example.com/x", [])  # resolved, and checked, when delivered


def test_the_signature_covers_the_body_and_a_recent_time() -> None:
    body = b'{"event":"job.ended"}'
    header = signature("key", body, 1_700_000_000)
    assert verify_signature("key", header, body, now=1_700_000_100)
    assert not verify_signature("key", header, body + b" ", now=1_700_000_100)
    assert not verify_signature("other", header, body, now=1_700_000_100)
    assert not verify_signature("key", header, body, now=1_700_000_000 + 301)  # a replay, too late
    assert not verify_signature("key", "v1=abc", body)
    assert not verify_signature("key", "t=soon,v1=abc", body)


def test_deliveries_back_off_doubling_up_to_ten_minutes() -> None:
    assert [retry_delay_s(n) for n in range(1, 6)] == [1.0, 2.0, 4.0, 8.0, 16.0]
    assert retry_delay_s(20) == 600.0
    assert retry_delay_s(3, scale=0.5) == 2.0
