"""Signed webhooks from the emulator, delivered over real HTTP to a local receiver."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import socket
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import httpx
import pytest

from convostore import ValidationError
from convostore.emulator import Emulator, sign_webhook

SECRET = "whsec_" + base64.b64encode(b"a-32-byte-secret-for-the-tests!!").decode()


@dataclass
class Receiver:
    """A webhook endpoint on loopback: records every POST, answers ``statuses`` in turn."""

    url: str
    received: list[tuple[dict[str, str], bytes]] = field(default_factory=list)
    statuses: list[int] = field(default_factory=list)

    def wait(self, count: int, timeout: float = 5.0) -> list[tuple[dict[str, str], bytes]]:
        deadline = time.monotonic() + timeout
        while len(self.received) < count:
            assert time.monotonic() < deadline, f"{len(self.received)} deliveries, want {count}"
            time.sleep(0.01)
        return list(self.received)


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    box: list[Receiver] = []

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers.get("content-length", "0")))
            rec = box[0]
            rec.received.append(({k.lower(): v for k, v in self.headers.items()}, body))
            status = rec.statuses.pop(0) if rec.statuses else 200
            self.send_response(status)
            self.send_header("content-length", "0")
            self.end_headers()

        def log_message(self, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    box.append(Receiver(url=f"http://127.0.0.1:{server.server_address[1]}/hook"))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield box[0]
    server.shutdown()
    server.server_close()


@pytest.fixture
def http(emulator: Emulator) -> Iterator[httpx.Client]:
    emulator.background_seconds = 0.01
    with httpx.Client(
        base_url=emulator.url, headers={"x-goog-api-key": "test-key"}, timeout=10
    ) as client:
        yield client


def background(http: httpx.Client, **body: Any) -> dict[str, Any]:
    response = http.post(
        "/v1/interactions", json={"model": "m", "input": "hello", "background": True, **body}
    )
    assert response.status_code == 200, response.text
    result: dict[str, Any] = response.json()
    return result


def verify(secret: str, headers: dict[str, str], body: bytes) -> bool:
    """Standard Webhooks verification, written independently of the emulator's signer."""
    key = base64.b64decode(secret.removeprefix("whsec_"))
    signed = f"{headers['webhook-id']}.{headers['webhook-timestamp']}.".encode() + body
    expected = base64.b64encode(hmac.new(key, signed, hashlib.sha256).digest()).decode()
    return any(
        hmac.compare_digest(entry.split(",", 1)[1], expected)
        for entry in headers["webhook-signature"].split()
        if entry.startswith("v1,")
    )


def test_sign_webhook_matches_the_standard_webhooks_reference() -> None:
    # The test vector of the Standard Webhooks reference libraries.
    headers = sign_webhook(
        "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw",
        "msg_p5jXN8AQM9LWM0D4loKWxJek",
        1614265330,
        '{"test": 2432232314}',
    )
    assert headers == {
        "webhook-id": "msg_p5jXN8AQM9LWM0D4loKWxJek",
        "webhook-timestamp": "1614265330",
        "webhook-signature": "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=",
    }
    plain = sign_webhook("plain secret", "m1", "5", b"{}")
    digest = hmac.new(b"plain secret", b"m1.5.{}", hashlib.sha256).digest()
    assert plain["webhook-signature"] == "v1," + base64.b64encode(digest).decode()


def test_a_finished_background_interaction_posts_a_signed_event(
    emulator: Emulator, http: httpx.Client, receiver: Receiver
) -> None:
    emulator.webhook_secret = SECRET
    started = background(
        http, webhook_config={"uris": [receiver.url], "user_metadata": {"job": "42"}}
    )
    [(headers, body)] = receiver.wait(1)
    assert verify(SECRET, headers, body)
    assert headers["content-type"] == "application/json"
    assert abs(int(headers["webhook-timestamp"]) - time.time()) < 60
    event = json.loads(body)
    assert event["type"] == "interaction.completed"
    assert event["id"] == event["interaction_id"] == started["id"]
    assert event["status"] == "completed" and event["version"] == "v1"
    assert event["user_metadata"] == {"job": "42"}
    assert event["timestamp"].endswith("Z")
    # the event is recorded too
    [delivery] = emulator.wait_for_webhooks(1)
    assert (delivery.uri, delivery.attempt, delivery.status) == (receiver.url, 1, 200)
    assert delivery.body == body and delivery.json() == event
    assert delivery.headers["webhook-signature"] == headers["webhook-signature"]
    # a tampered body no longer verifies
    assert not verify(SECRET, headers, body.replace(b"42", b"43"))
    # and the interaction the event names is finished
    assert http.get(f"/v1/interactions/{started['id']}").json()["status"] == "completed"


def test_failed_deliveries_are_retried_under_the_same_id(
    emulator: Emulator, http: httpx.Client, receiver: Receiver
) -> None:
    emulator.webhook_secret = SECRET
    receiver.statuses = [500, 503]
    background(http, webhook_config={"uris": [receiver.url]})
    received = receiver.wait(3)
    assert len({h["webhook-id"] for h, _ in received}) == 1
    assert all(verify(SECRET, h, b) for h, b in received)
    deliveries = emulator.wait_for_webhooks(3)
    assert [(d.attempt, d.status) for d in deliveries] == [(1, 500), (2, 503), (3, 200)]
    time.sleep(0.3)
    assert len(emulator.webhook_deliveries) == 3  # no attempt after a 2xx


def test_delivery_gives_up_after_webhook_attempts(
    emulator: Emulator, http: httpx.Client, receiver: Receiver
) -> None:
    emulator.webhook_attempts = 2
    receiver.statuses = [500] * 5
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        dead = f"http://127.0.0.1:{sock.getsockname()[1]}/hook"  # bound, never listening
        background(http, webhook_config={"uris": [receiver.url, dead]})
        deliveries = emulator.wait_for_webhooks(4)
    time.sleep(0.3)
    assert len(emulator.webhook_deliveries) == 4
    by_uri = {d.uri: d for d in deliveries if d.attempt == 2}
    assert by_uri[receiver.url].status == 500
    assert by_uri[dead].status is None and by_uri[dead].error
    # without a secret nothing is signed
    assert "webhook-signature" not in by_uri[receiver.url].headers
    assert "webhook-id" in by_uri[receiver.url].headers


def test_project_webhooks_and_every_final_status(
    emulator: Emulator, http: httpx.Client, receiver: Receiver
) -> None:
    emulator.webhook_secret = "any string works as a secret"
    emulator.webhook_uris = [receiver.url]
    emulator.background_seconds = 5
    running = background(http)
    assert http.post(f"/v1/interactions/{running['id']}/cancel").status_code == 200
    emulator.background_seconds = 0.01
    emulator.next_status("failed")
    failed = background(http)
    tools = [{"type": "function", "name": "get_weather", "parameters": {"type": "object"}}]
    action = background(http, input="call get_weather", tools=tools)
    received = receiver.wait(3)
    events = {json.loads(body)["interaction_id"]: json.loads(body) for _, body in received}
    assert events[running["id"]]["type"] == "interaction.cancelled"
    assert events[failed["id"]]["type"] == "interaction.failed"
    assert events[action["id"]]["type"] == "interaction.requires_action"
    assert all(e["user_metadata"] == {} for e in events.values())
    for headers, body in received:
        assert headers == {
            **headers,
            **sign_webhook(
                "any string works as a secret",
                headers["webhook-id"],
                headers["webhook-timestamp"],
                body,
            ),
        }


def test_answers_given_at_once_post_nothing(
    emulator: Emulator, http: httpx.Client, receiver: Receiver
) -> None:
    emulator.webhook_uris = [receiver.url]
    response = http.post(
        "/v1/interactions",
        json={"model": "m", "input": "hi", "webhook_config": {"uris": [receiver.url]}},
    )
    assert response.json()["status"] == "completed"
    emulator.next_status("queued")  # finishes later: notifies
    http.post("/v1/interactions", json={"model": "m", "input": "hi"})
    receiver.wait(1)
    time.sleep(0.2)
    assert len(receiver.received) == 1
    emulator.reset()
    assert emulator.webhook_deliveries == [] and emulator.webhook_uris == []
    assert emulator.webhook_secret is None


def test_webhook_settings_are_checked(emulator: Emulator, http: httpx.Client) -> None:
    for bad in ({"uris": "http://x"}, {"user_metadata": [1]}, "http://x"):
        response = http.post(
            "/v1/interactions", json={"model": "m", "input": "hi", "webhook_config": bad}
        )
        assert response.status_code == 400
        assert "webhook_config" in response.json()["error"]["message"]
    with pytest.raises(ValidationError):
        emulator.webhook_secret = ""
    with pytest.raises(ValidationError):
        emulator.webhook_uris = "http://x"  # type: ignore[assignment]
    with pytest.raises(ValidationError):
        emulator.webhook_attempts = 0
    with pytest.raises(TimeoutError):
        emulator.wait_for_webhooks(1, timeout=0.05)
