"""Who a dashboard client is, for the login limiter: pure rules, no Streamlit.

uvicorn (Streamlit's server) replaces a connection's address with one from
`X-Forwarded-For` only when the connection comes from an address listed in
its FORWARDED_ALLOW_IPS, walking the header from the right past every trusted
entry (the first untrusted one is the client: what a trusted proxy saw, which
the client cannot forge). `depthwatch up` and `dashboard` set it for Streamlit
from `--trusted-proxies` / DASHBOARD_TRUSTED_PROXIES, default none; Render's
blueprint sets Render's own proxies. Left unset (Streamlit started by hand),
uvicorn trusts 127.0.0.1, so a same-host tunnel or proxy passes a client's
forged header on: then every request carrying one shares a single bucket.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable, Mapping

FORWARDED_ALLOW_IPS_ENV = "FORWARDED_ALLOW_IPS"  # uvicorn's own variable
TRUSTED_PROXIES_ENV = "DASHBOARD_TRUSTED_PROXIES"
FORWARDED_HEADERS = ("x-forwarded-for", "forwarded")
LOCAL_CLIENT = "local"  # a connection from this machine (Streamlit gives no address)
UNTRUSTED_FORWARD = "forwarded"  # a forwarded header no configuration vouches for
IPV6_PREFIX = 64  # one host can change its address within its /64 at will


def parse_trusted_proxies(text: str) -> str:
    """A comma-separated list of IP addresses and networks, checked and
    normalised for FORWARDED_ALLOW_IPS ("" trusts none). "*" is refused: uvicorn
    would then take the leftmost entry of the header, which the client writes."""
    entries = [entry.strip() for entry in text.split(",") if entry.strip()]
    normalised = []
    for entry in entries:
        if entry == "*":
            raise ValueError(
                "trusted proxies '*' would let any client name its own address; "
                "list the proxies' addresses or networks"
            )
        try:
            network = ipaddress.ip_network(entry, strict=False)
        except ValueError:
            raise ValueError(
                f"trusted proxy {entry!r} is not an IP address or network (e.g. 10.0.0.0/8)"
            ) from None
        normalised.append(
            str(network.network_address) if network.num_addresses == 1 else str(network)
        )
    return ",".join(normalised)


def address_key(address: str | None) -> str:
    """The limiter's bucket for an address: itself for IPv4, its /64 for
    IPv6, LOCAL_CLIENT for none (Streamlit gives none for loopback)."""
    if not address:
        return LOCAL_CLIENT
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return "unparsed:" + address[:64]
    if isinstance(ip, ipaddress.IPv6Address):
        if ip.ipv4_mapped is not None:
            return str(ip.ipv4_mapped)
        return str(ipaddress.ip_network(f"{ip}/{IPV6_PREFIX}", strict=False))
    return str(ip)


def client_key(address: str | None, header_names: Iterable[str], environ: Mapping[str, str]) -> str:
    """The bucket of a connection: its address (as uvicorn rewrote it for a
    trusted proxy), unless it carries a forwarded header while no trusted
    proxies are configured."""
    forwarded = any(name.lower() in FORWARDED_HEADERS for name in header_names)
    if forwarded and FORWARDED_ALLOW_IPS_ENV not in environ:
        return UNTRUSTED_FORWARD
    return address_key(address)
