"""Bedrock credentials, region rules and SigV4 signing, checked by the mock Bedrock.

Every signed request goes to ``relay.testing.mock_bedrock.MockBedrock`` on loopback,
which recomputes the signature with botocore and refuses a mismatch, so a
test passes only if the relay signed exactly what it sent. The machine's own
AWS configuration is kept out: every ``AWS_*`` variable is removed and the
config/credentials files point into a temporary directory.
"""

from __future__ import annotations

import datetime as dt
import functools
import json
import os
from pathlib import Path
from typing import Any

import h11
import httpx
import pytest
import trio

from relay.intercept.bedrock.translate import invoke_path, invoke_stream_path
from relay.providers.types import Provider, ProviderType
from relay.testing.mock_bedrock import SIGNATURE_MISMATCH, MockBedrock
from relay.upstream.aws import (
    AuthMode,
    BedrockAuth,
    BedrockConfigError,
    BedrockCredentialsError,
    endpoint_url,
)

MODEL = "global.anthropic.claude-sonnet-4-5-20250929-v1:0"
BODY = b'{"anthropic_version":"bedrock-2023-05-31","max_tokens":64,"messages":[{"role":"user","content":"hi"}]}'
ACCESS_KEY = "AKIAMOCKRELAY0000001"
SECRET = "mock/Secret+Key/0123456789abcdefghijklmnop"
API_KEY = "ABSKbW9jay1iZWRyb2NrLWFwaS1rZXktMDAwMQ=="
REGION = "eu-west-3"


@pytest.fixture(autouse=True)
def aws_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    """No AWS configuration but what a test writes; no network but loopback."""
    for name in list(os.environ):
        if name.startswith("AWS_") or name.lower() in ("http_proxy", "https_proxy", "all_proxy"):
            monkeypatch.delenv(name)
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "config"))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "credentials"))
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    monkeypatch.setenv("NO_PROXY", "127.0.0.1,localhost")
    return tmp_path


@pytest.fixture
async def mock(nursery: trio.Nursery) -> MockBedrock:
    server = MockBedrock(region=REGION, credentials={ACCESS_KEY: SECRET}, api_keys={API_KEY})
    await nursery.start(server.serve, 0)
    return server


async def invoke(
    auth: BedrockAuth, *, stream: bool = False, body: bytes = BODY, sent_body: bytes | None = None
) -> httpx.Response:
    """Sign a request with ``auth`` and send it (``sent_body`` differs from the signed one)."""
    path = invoke_stream_path(MODEL) if stream else invoke_path(MODEL)
    url = endpoint_url(auth) + path
    headers = {"content-type": "application/json", "accept": "application/json"}
    signed = await auth.sign("POST", url, headers, body)
    async with httpx.AsyncClient(trust_env=False) as client:
        return await client.post(
            url, content=body if sent_body is None else sent_body, headers=headers | dict(signed)
        )


def assert_signature_refused(response: httpx.Response) -> None:
    assert response.status_code == 403
    assert response.headers["x-amzn-errortype"].startswith("InvalidSignatureException:")
    assert response.json() == {"message": SIGNATURE_MISMATCH}


# --- static keys -----------------------------------------------------------------


async def test_static_keys_sign_with_sigv4(mock: MockBedrock) -> None:
    auth = BedrockAuth.from_fields(
        region=REGION, access_key=ACCESS_KEY, access_key_secret=SECRET, base_url=mock.base_url
    )
    assert auth.mode is AuthMode.STATIC_KEYS
    response = await invoke(auth)
    assert response.status_code == 200, response.text
    sent = mock.requests[-1]
    assert sent.path == "/model/global.anthropic.claude-sonnet-4-5-20250929-v1%3A0/invoke"
    credential = sent.header("authorization") or ""
    assert credential.startswith(f"AWS4-HMAC-SHA256 Credential={ACCESS_KEY}/")
    assert f"/{REGION}/bedrock/aws4_request, SignedHeaders=" in credential
    assert sent.header("x-amz-security-token") is None
    assert (await invoke(auth, stream=True)).status_code == 200


async def test_wrong_secret_is_refused(mock: MockBedrock) -> None:
    auth = BedrockAuth.from_fields(
        region=REGION,
        access_key=ACCESS_KEY,
        access_key_secret=SECRET[:-1] + "X",
        base_url=mock.base_url,
    )
    assert_signature_refused(await invoke(auth))


async def test_the_body_and_signed_headers_are_covered(mock: MockBedrock) -> None:
    auth = BedrockAuth.from_fields(
        region=REGION, access_key=ACCESS_KEY, access_key_secret=SECRET, base_url=mock.base_url
    )
    assert_signature_refused(await invoke(auth, sent_body=BODY.replace(b"64", b"65")))
    url = mock.base_url + invoke_path(MODEL)
    signed = dict(await auth.sign("POST", url, {"content-type": "application/json"}, BODY))
    async with httpx.AsyncClient(trust_env=False) as client:
        response = await client.post(
            url, content=BODY, headers={"content-type": "text/plain"} | signed
        )
    assert_signature_refused(response)


# --- API key -----------------------------------------------------------------------


async def test_api_key_is_sent_as_bearer(mock: MockBedrock) -> None:
    auth = BedrockAuth.from_fields(api_key=API_KEY, base_url=mock.base_url)
    assert auth.mode is AuthMode.API_KEY
    assert auth.region == "us-east-1"  # the fallback of this mode only
    assert await auth.sign("POST", mock.base_url + "/x", {}, BODY) == [
        ("authorization", f"Bearer {API_KEY}")
    ]
    assert (await invoke(auth)).status_code == 200
    assert mock.requests[-1].header("authorization") == f"Bearer {API_KEY}"
    wrong = BedrockAuth.from_fields(api_key=API_KEY + "x", base_url=mock.base_url)
    assert (await invoke(wrong)).status_code == 403


# --- the ambient credential chain -----------------------------------------------------


async def test_chain_from_environment_variables(
    mock: MockBedrock, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", ACCESS_KEY)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", SECRET)
    monkeypatch.setenv("AWS_SESSION_TOKEN", "session-token-from-env")
    monkeypatch.setenv("AWS_REGION", REGION)
    mock.session_tokens[ACCESS_KEY] = "session-token-from-env"
    auth = BedrockAuth.from_fields(base_url=mock.base_url)
    assert (auth.mode, auth.region) == (AuthMode.AMBIENT, REGION)
    response = await invoke(auth, stream=True)
    assert response.status_code == 200, response.text
    assert mock.requests[-1].header("x-amz-security-token") == "session-token-from-env"

    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "not-the-secret-at-all-0000000000000000")
    assert_signature_refused(await invoke(BedrockAuth.from_fields(base_url=mock.base_url)))


async def test_chain_from_shared_credentials_file_and_profile(
    mock: MockBedrock, monkeypatch: pytest.MonkeyPatch, aws_env: Path
) -> None:
    (aws_env / "credentials").write_text(
        "[default]\naws_access_key_id = AKIADEFAULT000000000\naws_secret_access_key = nope\n\n"
        f"[relay-test]\naws_access_key_id = {ACCESS_KEY}\naws_secret_access_key = {SECRET}\n"
        "\n[relay-broken]\n"
        f"aws_access_key_id = {ACCESS_KEY}\naws_secret_access_key = wrong-secret-000000000\n"
    )
    (aws_env / "config").write_text(
        f"[profile relay-test]\nregion = {REGION}\n\n[profile relay-broken]\nregion = {REGION}\n"
    )
    monkeypatch.setenv("AWS_PROFILE", "relay-test")
    auth = BedrockAuth.from_fields(base_url=mock.base_url)
    assert auth.region == REGION  # from the profile
    response = await invoke(auth)
    assert response.status_code == 200, response.text

    monkeypatch.setenv("AWS_PROFILE", "relay-broken")
    assert_signature_refused(await invoke(BedrockAuth.from_fields(base_url=mock.base_url)))


class ContainerCredentials:
    """An ECS/EKS-style container credentials endpoint on loopback.

    Every fetch hands out a new session token, so a test sees each refresh.
    """

    def __init__(self, secret: str, expires_in: dt.timedelta) -> None:
        self.secret = secret
        self.expires_in = expires_in
        self.fetches = 0
        self.port = 0

    async def serve(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
        self.port = listeners[0].socket.getsockname()[1]
        task_status.started()
        await trio.serve_listeners(self._answer, listeners)

    async def _answer(self, stream: trio.SocketStream) -> None:
        conn = h11.Connection(h11.SERVER)
        async with stream:
            while type(event := conn.next_event()) is not h11.EndOfMessage:
                if event is h11.NEED_DATA:
                    conn.receive_data(await stream.receive_some(4096))
            self.fetches += 1
            expires = dt.datetime.now(dt.UTC) + self.expires_in
            body = json.dumps(
                {
                    "AccessKeyId": ACCESS_KEY,
                    "SecretAccessKey": self.secret,
                    "Token": f"container-token-{self.fetches}",
                    "Expiration": expires.strftime("%Y-%m-%dT%H:%M:%SZ"),
                }
            ).encode()
            headers = [("content-type", "application/json"), ("content-length", str(len(body)))]
            headers.append(("connection", "close"))
            for out in (h11.Response(status_code=200, headers=headers), h11.Data(data=body)):
                await stream.send_all(conn.send(out))
            await stream.send_all(conn.send(h11.EndOfMessage()))


async def container_auth(
    nursery: trio.Nursery, monkeypatch: pytest.MonkeyPatch, mock: MockBedrock, **kwargs: object
) -> tuple[BedrockAuth, ContainerCredentials]:
    endpoint = ContainerCredentials(**kwargs)  # type: ignore[arg-type]
    await nursery.start(endpoint.serve)
    monkeypatch.setenv(
        "AWS_CONTAINER_CREDENTIALS_FULL_URI", f"http://127.0.0.1:{endpoint.port}/creds"
    )
    return BedrockAuth.from_fields(region=REGION, base_url=mock.base_url), endpoint


async def test_chain_from_container_credentials_endpoint(
    mock: MockBedrock, nursery: trio.Nursery, monkeypatch: pytest.MonkeyPatch
) -> None:
    auth, endpoint = await container_auth(
        nursery, monkeypatch, mock, secret=SECRET, expires_in=dt.timedelta(hours=6)
    )
    for _ in range(3):
        assert (await invoke(auth)).status_code == 200
    assert endpoint.fetches == 1  # cached until close to expiry
    assert mock.requests[-1].header("x-amz-security-token") == "container-token-1"


async def test_container_credentials_are_refreshed_before_expiry(
    mock: MockBedrock, nursery: trio.Nursery, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Five minutes left is inside botocore's refresh window: every use refreshes.
    # The fetch runs in a worker thread while this trio loop serves the
    # endpoint: were it run on the trio thread, the test would hang.
    auth, endpoint = await container_auth(
        nursery, monkeypatch, mock, secret=SECRET, expires_in=dt.timedelta(minutes=5)
    )
    assert (await invoke(auth)).status_code == 200
    assert (await invoke(auth)).status_code == 200
    assert endpoint.fetches >= 2
    tokens = [r.header("x-amz-security-token") for r in mock.requests[-2:]]
    assert tokens[0] != tokens[1]
    assert tokens[1] == f"container-token-{endpoint.fetches}"


async def test_container_credentials_with_a_wrong_secret_are_refused(
    mock: MockBedrock, nursery: trio.Nursery, monkeypatch: pytest.MonkeyPatch
) -> None:
    auth, _ = await container_auth(
        nursery,
        monkeypatch,
        mock,
        secret="wrong-secret-0000000000",
        expires_in=dt.timedelta(hours=1),
    )
    assert_signature_refused(await invoke(auth))


async def test_no_credentials_anywhere() -> None:
    auth = BedrockAuth.from_fields(region=REGION)
    with pytest.raises(BedrockCredentialsError, match="no AWS credentials"):
        await auth.sign("POST", "https://bedrock-runtime.eu-west-3.amazonaws.com/x", {}, b"")


# --- region rules and the endpoint ---------------------------------------------------


def test_region_rules(monkeypatch: pytest.MonkeyPatch, aws_env: Path) -> None:
    static_keys = functools.partial(
        BedrockAuth.from_fields, access_key=ACCESS_KEY, access_key_secret=SECRET
    )
    with pytest.raises(BedrockConfigError, match="no AWS region"):
        static_keys()
    with pytest.raises(BedrockConfigError, match="no AWS region"):
        BedrockAuth.from_fields()
    (aws_env / "config").write_text("[default]\nregion = ap-south-1\n")
    assert static_keys().region == "ap-south-1"
    monkeypatch.setenv("AWS_DEFAULT_REGION", "ca-central-1")
    assert static_keys().region == "ca-central-1"
    monkeypatch.setenv("AWS_REGION", "sa-east-1")
    assert static_keys().region == "sa-east-1"
    assert BedrockAuth.from_fields(api_key=API_KEY).region == "sa-east-1"
    assert static_keys(region="us-west-2").region == "us-west-2"
    monkeypatch.setenv("AWS_PROFILE", "does-not-exist")
    monkeypatch.delenv("AWS_REGION")
    monkeypatch.delenv("AWS_DEFAULT_REGION")
    with pytest.raises(BedrockConfigError, match="does-not-exist"):
        BedrockAuth.from_fields()


@pytest.mark.parametrize(
    "fields",
    [
        {"access_key": ACCESS_KEY},
        {"access_key_secret": SECRET},
        {"api_key": API_KEY, "access_key": ACCESS_KEY, "access_key_secret": SECRET},
    ],
)
def test_credential_fields_that_cannot_work(fields: dict[str, Any]) -> None:
    with pytest.raises(BedrockConfigError):
        BedrockAuth.from_fields(region=REGION, **fields)


def test_endpoint_url() -> None:
    auth = BedrockAuth.from_fields(region="us-west-2", api_key=API_KEY)
    assert endpoint_url(auth) == "https://bedrock-runtime.us-west-2.amazonaws.com"
    proxied = BedrockAuth.from_fields(api_key=API_KEY, base_url="https://gw.example/bedrock/")
    assert endpoint_url(proxied) == "https://gw.example/bedrock"


async def test_base_url_is_forwarded_and_signing_keeps_region_and_service(
    nursery: trio.Nursery,
) -> None:
    # The mock only accepts a scope of its own region and the "bedrock"
    # service, whatever host it is reached at.
    mock = MockBedrock(region="ap-southeast-2", credentials={ACCESS_KEY: SECRET})
    await nursery.start(mock.serve, 0)
    auth = BedrockAuth.from_fields(
        region="ap-southeast-2",
        access_key=ACCESS_KEY,
        access_key_secret=SECRET,
        base_url=mock.base_url + "/",
    )
    response = await invoke(auth)
    assert response.status_code == 200, response.text
    assert "/ap-southeast-2/bedrock/aws4_request" in (
        mock.requests[-1].header("authorization") or ""
    )
    elsewhere = BedrockAuth.from_fields(
        region="us-east-1", access_key=ACCESS_KEY, access_key_secret=SECRET, base_url=mock.base_url
    )
    assert (await invoke(elsewhere)).status_code == 403


def test_from_provider_and_secrets_never_shown() -> None:
    provider = Provider(
        name="bedrock",
        type=ProviderType.BEDROCK,
        bedrock_region=REGION,
        bedrock_access_key=ACCESS_KEY,
        bedrock_access_key_secret=SECRET,
    )
    auth = BedrockAuth.from_provider(provider)
    assert (auth.mode, auth.region) == (AuthMode.STATIC_KEYS, REGION)
    pooled = Provider(name="b2", type=ProviderType.BEDROCK, keys=(API_KEY, API_KEY[::-1]))
    assert BedrockAuth.from_provider(pooled).mode is AuthMode.API_KEY
    for shown in (repr(auth), str(auth), repr(BedrockAuth.from_provider(pooled))):
        assert SECRET not in shown and ACCESS_KEY not in shown and API_KEY not in shown
        assert "…" in shown
