"""The rules for caller-supplied URLs, proven without sending a packet anywhere.

`OutboundClient` is given a recording network backend: it records what the
policy let through and connects nowhere (it fails every connect). So a
refused destination is proven refused *before* any connection is attempted,
and the private, link-local and public addresses of this matrix are never
contacted. The real sockets and redirects are exercised against loopback
stubs in tests/acceptance/test_transcription_ssrf.py.
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket
from collections.abc import Iterable
from typing import Any

import httpcore
import httpx
import pytest

from ai_service.config import load_settings
from ai_service.errors import ConfigError
from ai_service.outbound import (
    DestinationNotAllowed,
    OutboundClient,
    UrlPolicy,
    cookieless_jar,
    is_public_address,
)

DEFAULT = UrlPolicy()


class RecordingBackend(httpcore.AsyncNetworkBackend):
    """Records every connect the policy allowed; never opens a socket."""

    def __init__(self) -> None:
        self.connects: list[tuple[str, int]] = []

    async def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,
        local_address: str | None = None,
        socket_options: Iterable[httpcore.SOCKET_OPTION] | None = None,
    ) -> httpcore.AsyncNetworkStream:
        self.connects.append((host, port))
        raise httpcore.ConnectError("the recording backend connects nowhere")

    async def connect_unix_socket(
        self,
        path: str,
        timeout: float | None = None,
        socket_options: Iterable[httpcore.SOCKET_OPTION] | None = None,
    ) -> httpcore.AsyncNetworkStream:
        raise AssertionError("never a unix socket")

    async def sleep(self, seconds: float) -> None:
        await asyncio.sleep(seconds)


async def fetch(policy: UrlPolicy, url: str, backend: RecordingBackend | None = None) -> None:
    """GET `url` through the policy on a recording backend (it always raises)."""
    async with (
        OutboundClient(policy, network_backend=backend or RecordingBackend()) as client,
        client.stream("GET", url, timeout=2.0),
    ):
        raise AssertionError("the recording backend never answers")


# -- the SSRF matrix, default rules -------------------------------------------------

INTERNAL_URLS = [
    "http://127.0.0.1/",
    "http://127.1/",
    "http://2130706433/",
    "http://0x7f000001/",
    "http://0177.0.0.1/",
    "http://0.0.0.0:8080/",
    "http://10.0.0.1/",
    "https://10.0.0.1:8443/audio.wav",
    "http://172.16.0.1/",
    "http://192.168.1.1/",
    "http://169.254.169.254/latest/meta-data/",
    "http://100.64.0.1/",
    "http://[::1]/",
    "http://[::]/",
    "http://[::ffff:127.0.0.1]/",
    "http://[::ffff:10.0.0.1]/",
    "http://[fc00::1]/",
    "http://[fd12:3456::1]/",
    "http://[fe80::1]/",
    "http://[64:ff9b::a9fe:a9fe]/",  # NAT64 of 169.254.169.254
    "http://[2002:a00:1::]/",  # 6to4 of 10.0.0.1
    "http://localhost/",
    "http://LOCALHOST/",
    "http://224.0.0.1/",
]


@pytest.mark.parametrize("url", INTERNAL_URLS)
async def test_internal_destinations_are_refused_before_connecting(url: str) -> None:
    backend = RecordingBackend()
    with pytest.raises(DestinationNotAllowed) as caught:
        async with (
            OutboundClient(DEFAULT, network_backend=backend) as client,
            client.stream("GET", url, timeout=2.0),
        ):
            pass
    assert str(caught.value) == "destination not allowed"
    assert backend.connects == []


@pytest.mark.parametrize(
    "url",
    ["ftp://files.example/a.wav", "file:///etc/passwd", "gopher://h:70/", "ws://h/", "http:///a"],
)
async def test_other_schemes_and_host_less_urls_are_refused(url: str) -> None:
    backend = RecordingBackend()
    with pytest.raises(DestinationNotAllowed):
        async with (
            OutboundClient(DEFAULT, network_backend=backend) as client,
            client.stream("GET", url, timeout=2.0),
        ):
            pass
    assert backend.connects == []


@pytest.mark.parametrize(
    "host",
    [
        "127.0.0.1", "127.1", "2130706433", "0x7f000001", "0.0.0.0", "10.0.0.1",
        "172.16.0.1", "192.168.1.1", "169.254.169.254", "::1", "::ffff:127.0.0.1",
        "fc00::1", "fe80::1", "localhost",
    ],
)  # fmt: skip
async def test_the_policy_refuses_each_internal_host_directly(host: str) -> None:
    with pytest.raises(DestinationNotAllowed):
        await DEFAULT.resolve(host, 80)
    with pytest.raises(DestinationNotAllowed):
        await DEFAULT.check(f"http://[{host}]/" if ":" in host else f"http://{host}/")


@pytest.mark.parametrize(
    "address",
    ["127.0.0.1", "10.1.2.3", "172.31.255.255", "192.168.0.1", "169.254.169.254", "0.0.0.0",
     "100.64.0.1", "255.255.255.255", "::1", "::", "fc00::1", "fe80::1", "ff02::1",
     "::ffff:192.168.0.1", "64:ff9b::7f00:1", "2002:7f00:1::", "fec0::1"],
)  # fmt: skip
def test_non_public_addresses(address: str) -> None:
    assert not is_public_address(ipaddress.ip_address(address))
    assert not DEFAULT.allows_address(ipaddress.ip_address(address))


@pytest.mark.parametrize(
    "address", ["8.8.8.8", "1.1.1.1", "2606:4700:4700::1111", "::ffff:8.8.8.8", "64:ff9b::808:808"]
)
def test_public_addresses(address: str) -> None:
    assert is_public_address(ipaddress.ip_address(address))


async def test_a_public_address_is_let_through_to_the_socket_layer() -> None:
    backend = RecordingBackend()
    with pytest.raises(httpx.ConnectError):  # the recording backend's refusal
        await fetch(DEFAULT, "https://8.8.8.8/a.wav", backend)
    assert backend.connects == [("8.8.8.8", 443)]


async def test_the_connection_goes_to_the_checked_address_not_a_new_lookup(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # DNS rebinding: the name answers a public address first, loopback after.
    answers = [["93.184.215.14"], ["127.0.0.1"]]
    lookups: list[str] = []

    async def getaddrinfo(host: str, port: int, **_: Any) -> list[Any]:
        lookups.append(host)
        addresses = answers.pop(0)
        return [(socket.AF_INET, socket.SOCK_STREAM, 6, "", (a, port)) for a in addresses]

    monkeypatch.setattr(asyncio.get_running_loop(), "getaddrinfo", getaddrinfo)
    backend = RecordingBackend()
    async with OutboundClient(DEFAULT, network_backend=backend) as client:
        with pytest.raises(httpx.ConnectError):
            async with client.stream("GET", "http://rebind.example/a.wav", timeout=2.0):
                pass
        with pytest.raises(DestinationNotAllowed):
            async with client.stream("GET", "http://rebind.example/a.wav", timeout=2.0):
                pass
    # One lookup per connect, and the socket was asked for the checked address.
    assert lookups == ["rebind.example", "rebind.example"]
    assert backend.connects == [("93.184.215.14", 80)]


async def test_a_name_with_one_internal_address_among_public_ones_is_refused(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    async def getaddrinfo(host: str, port: int, **_: Any) -> list[Any]:
        return [
            (socket.AF_INET, socket.SOCK_STREAM, 6, "", ("93.184.215.14", port)),
            (socket.AF_INET, socket.SOCK_STREAM, 6, "", ("10.0.0.1", port)),
        ]

    monkeypatch.setattr(asyncio.get_running_loop(), "getaddrinfo", getaddrinfo)
    backend = RecordingBackend()
    with pytest.raises(DestinationNotAllowed):
        async with (
            OutboundClient(DEFAULT, network_backend=backend) as client,
            client.stream("GET", "https://mixed.example/", timeout=2.0),
        ):
            pass
    assert backend.connects == []


# -- the allow-list -------------------------------------------------------------------


async def test_an_allowed_network_lets_its_addresses_through_and_no_other() -> None:
    policy = UrlPolicy.from_setting("10.20.0.0/16, 127.0.0.2")
    backend = RecordingBackend()
    with pytest.raises(httpx.ConnectError):
        await fetch(policy, "http://10.20.3.4:9000/a.wav", backend)
    with pytest.raises(httpx.ConnectError):  # the same address, v4-mapped
        await fetch(policy, "http://[::ffff:127.0.0.2]/a.wav", backend)
    assert backend.connects == [("10.20.3.4", 9000), ("::ffff:127.0.0.2", 80)]
    for refused in ("http://10.21.0.1/", "http://127.0.0.1/", "http://192.168.1.1/"):
        with pytest.raises(DestinationNotAllowed):
            await fetch(policy, refused)


async def test_an_allowed_host_name_matches_exactly_and_case_insensitively() -> None:
    policy = UrlPolicy.from_setting("LocalHost.")
    backend = RecordingBackend()
    with pytest.raises(httpx.ConnectError):
        async with (
            OutboundClient(policy, network_backend=backend) as client,
            client.stream("GET", "http://localhost:8080/a.wav", timeout=2.0),
        ):
            pass
    assert backend.connects
    assert all(ipaddress.ip_address(host).is_loopback for host, _ in backend.connects)
    assert {port for _, port in backend.connects} == {8080}
    # The name allows the name, not the addresses it resolves to.
    with pytest.raises(DestinationNotAllowed):
        await fetch(policy, "http://127.0.0.1:8080/a.wav")


def test_allow_list_syntax() -> None:
    policy = UrlPolicy.from_setting(" Files.Internal. , 10.0.0.0/8,192.168.1.7, [::1] ,fd00::/8,")
    assert policy.hosts == {"files.internal"}
    assert [str(n) for n in policy.networks] == [
        "10.0.0.0/8",
        "192.168.1.7/32",
        "::1/128",
        "fd00::/8",
    ]
    assert UrlPolicy.from_setting("") == UrlPolicy()


@pytest.mark.parametrize(
    "entry", ["http://files.internal", "files.internal:8080", "10.0.0.1/8", "127.1", "2130706433",
              "a b", "host/path", "10.0.0.0/33"],
)  # fmt: skip
def test_bad_allow_list_entries_are_a_configuration_error(entry: str) -> None:
    with pytest.raises(ConfigError) as caught:
        load_settings({"AUDIO_URL_ALLOW": f"ok.example,{entry}"})
    assert str(caught.value).startswith("AUDIO_URL_ALLOW ")
    assert repr(entry) in str(caught.value)


def test_the_setting_defaults_to_public_destinations_only() -> None:
    assert load_settings({}).audio_url_allow == UrlPolicy()
    assert load_settings({"AUDIO_URL_ALLOW": "127.0.0.1"}).audio_url_allow.networks == (
        ipaddress.ip_network("127.0.0.1/32"),
    )


# -- cookies ------------------------------------------------------------------------


def test_the_cookieless_jar_neither_stores_nor_sends() -> None:
    jar = httpx.Cookies(cookieless_jar())
    request = httpx.Request("GET", "http://files.example/a")
    response = httpx.Response(200, headers={"Set-Cookie": "session=abc; Path=/"}, request=request)
    jar.extract_cookies(response)
    assert list(jar.jar) == []
    jar.set("session", "abc", domain="files.example")  # even a cookie put in by hand
    follow_up = httpx.Request("GET", "http://files.example/b")
    jar.set_cookie_header(follow_up)
    assert "cookie" not in follow_up.headers
