"""Completion webhooks: which addresses a callback may reach, and how its body is signed.

A callback is a request the cluster makes on a caller's behalf, from inside the cluster's network: an
address that is not public (loopback, private ranges, link-local such as the cloud metadata service) is
refused unless an operator allows its network (``LLM_ROUTER_WEBHOOK_ALLOWED_NETWORKS``). The check runs on
submission for an address written as a number, and again at delivery on every address the host name
resolves to; the request then goes to the address that was checked, so a name that resolves elsewhere the
second time reaches nothing new.

The body is signed like Stripe's: ``X-LLM-Router-Signature: t=<unix time>,v1=<hex HMAC-SHA256 of
"<t>.<body>" under LLM_ROUTER_WEBHOOK_SECRET>``. A receiver recomputes it (``verify_signature``) and
refuses an old timestamp, so a captured delivery cannot be replayed later.
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import socket
import time
from urllib.parse import urlsplit

from llm_router.tasks.errors import InvalidRequest

SIGNATURE_HEADER = "X-LLM-Router-Signature"
EVENT_HEADER = "X-LLM-Router-Event"
DELIVERY_HEADER = "X-LLM-Router-Delivery"
SIGNATURE_TOLERANCE_S = 300.0

Address = ipaddress.IPv4Address | ipaddress.IPv6Address
Network = ipaddress.IPv4Network | ipaddress.IPv6Network


class CallbackRefused(InvalidRequest):
    """A callback URL that points at an address the cluster must not call."""


def allowed_networks(setting: str) -> list[Network]:
    """``LLM_ROUTER_WEBHOOK_ALLOWED_NETWORKS``: comma-separated addresses or CIDRs."""
    networks: list[Network] = []
    for item in (part.strip() for part in setting.split(",")):
        if not item:
            continue
        try:
            networks.append(ipaddress.ip_network(item, strict=False))
        except ValueError:
            raise InvalidRequest(
                f"webhook_allowed_networks: {item!r} is not an address or CIDR", field="webhook_allowed_networks"
            ) from None
    return networks


def _plain(address: Address) -> Address:
    # ::ffff:10.0.0.1 is 10.0.0.1.
    mapped = getattr(address, "ipv4_mapped", None)
    return mapped if mapped is not None else address


def address_allowed(address: Address, allowed: list[Network]) -> bool:
    address = _plain(address)
    if any(address in network for network in allowed):
        return True
    return address.is_global and not address.is_multicast


def _refuse(host: str, address: Address) -> CallbackRefused:
    return CallbackRefused(
        f"callback_url: {host} is {address}, not a public address; an operator may allow its network in "
        "LLM_ROUTER_WEBHOOK_ALLOWED_NETWORKS",
        field="callback_url",
    )


def check_callback_url(url: str, allowed: list[Network]) -> None:
    """Refuse, on submission, a callback whose host is written as an address that is not allowed (or is
    ``localhost``). Names are resolved only at delivery."""
    host = urlsplit(url).hostname or ""
    if host == "localhost" or host.endswith(".localhost"):
        literal: Address = ipaddress.ip_address("127.0.0.1")
    else:
        try:
            literal = ipaddress.ip_address(host)
        except ValueError:
            return
    if not address_allowed(literal, allowed):
        raise _refuse(host, literal)


def resolve_allowed(url: str, allowed: list[Network]) -> Address:
    """The address to deliver ``url`` to: every address its host resolves to must be allowed (a name with
    one private address among public ones is refused). Raises ``CallbackRefused``, or ``OSError`` when the
    name does not resolve."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    port = parts.port or (443 if parts.scheme == "https" else 80)
    found = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    addresses = [ipaddress.ip_address(str(info[4][0]).split("%", 1)[0]) for info in found]
    for address in addresses:
        if not address_allowed(address, allowed):
            raise _refuse(host, address)
    if not addresses:
        raise OSError(f"{host} resolves to no address")
    return addresses[0]


def signature(secret: str, body: bytes, timestamp: int) -> str:
    digest = hmac.new(secret.encode(), f"{timestamp}.".encode() + body, hashlib.sha256).hexdigest()
    return f"t={timestamp},v1={digest}"


def verify_signature(
    secret: str, header: str, body: bytes, *, tolerance_s: float = SIGNATURE_TOLERANCE_S, now: float | None = None
) -> bool:
    """For receivers: whether ``header`` signs ``body`` under ``secret`` within ``tolerance_s`` of now."""
    fields = dict(part.split("=", 1) for part in header.split(",") if "=" in part)
    try:
        timestamp = int(fields["t"])
    except (KeyError, ValueError):
        return False
    if abs((time.time() if now is None else now) - timestamp) > tolerance_s:
        return False
    expected = signature(secret, body, timestamp).split("v1=", 1)[1]
    return hmac.compare_digest(expected, fields.get("v1", ""))


def retry_delay_s(attempt: int, scale: float = 1.0) -> float:
    """Seconds before delivery attempt ``attempt + 1`` after ``attempt`` failed: 1, 2, 4, ... up to 10 min."""
    return min(2.0 ** (attempt - 1), 600.0) * scale
