"""AWS credentials, region and request signing for Bedrock providers.

A bedrock provider authenticates in one of three modes, chosen from its fields:

- static keys (access key id and secret both set): SigV4 with them;
- API key (the provider's ``KEY``): ``Authorization: Bearer <key>``;
- ambient (neither): botocore's standard credential chain (environment,
  shared config/credentials files and profiles, SSO, web identity, container
  credentials endpoint, EC2 instance metadata), refreshed before expiry.

The region is the configured one, else the AWS chain (``AWS_REGION``,
``AWS_DEFAULT_REGION``, the profile's ``region``); in API key mode only it
falls back to ``us-east-1``. Without a region a ``BedrockConfigError`` is
raised when the provider is built, so the relay refuses to start.

Resolving or refreshing ambient credentials can mean HTTP calls (container
endpoint, IMDS, STS); those run in a worker thread so the trio thread never
blocks on them. Secrets never reach logs or ``repr``: only masked hints do.
"""

from __future__ import annotations

import enum
import os
from collections.abc import Mapping
from urllib.parse import urlsplit

import trio
from botocore.auth import SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials, ReadOnlyCredentials, RefreshableCredentials
from botocore.exceptions import BotoCoreError, ProfileNotFound
from botocore.session import Session

from relay.errors import StartupError
from relay.providers.types import Provider, mask_secret

SIGNING_SERVICE = "bedrock"
API_KEY_DEFAULT_REGION = "us-east-1"


class BedrockConfigError(StartupError, ValueError):
    """A bedrock provider's settings cannot work; raised at startup, the message says why."""


class BedrockCredentialsError(RuntimeError):
    """No AWS credentials could be resolved (or refreshed) for a request."""


class AuthMode(enum.StrEnum):
    STATIC_KEYS = "static-keys"
    API_KEY = "api-key"
    AMBIENT = "ambient"


class BedrockAuth:
    """How one bedrock provider reaches and authenticates to Bedrock.

    Build it with :meth:`from_fields` at startup; then per request call
    :func:`endpoint_url` and ``await auth.sign(...)``.
    """

    def __init__(
        self,
        *,
        mode: AuthMode,
        region: str,
        base_url: str = "",
        static_credentials: Credentials | None = None,
        api_key: str | None = None,
        session: Session | None = None,
    ) -> None:
        self.mode = mode
        self.region = region
        self.base_url = base_url.rstrip("/")
        self._static_credentials = static_credentials
        self._api_key = api_key
        self._session = session
        # Ambient credentials, resolved on first use (possibly slow: IMDS, STS).
        self._ambient: Credentials | None = None
        self._resolve_lock = trio.Lock()

    @classmethod
    def from_fields(
        cls,
        *,
        region: str = "",
        access_key: str = "",
        access_key_secret: str = "",
        session_token: str = "",
        api_key: str = "",
        base_url: str = "",
        env: Mapping[str, str] | None = None,
    ) -> BedrockAuth:
        """Build from a provider's fields (empty string = not set).

        ``env`` is where ``AWS_REGION`` and ``AWS_DEFAULT_REGION`` are read (default: ``os.environ``);
        botocore itself reads the process environment for the rest of the chain.
        """
        env = os.environ if env is None else env
        if bool(access_key) != bool(access_key_secret):
            raise BedrockConfigError(
                "bedrock: the access key id and the access key secret must be set together "
                "(or neither, to use the AWS credential chain)"
            )
        if api_key and access_key:
            raise BedrockConfigError(
                "bedrock: set either an API key (KEY) or an access key pair, not both"
            )
        if api_key:
            mode = AuthMode.API_KEY
        elif access_key:
            mode = AuthMode.STATIC_KEYS
        else:
            mode = AuthMode.AMBIENT

        # The chain's session is needed for ambient credentials, and for a region
        # that is not configured (AWS_DEFAULT_REGION, the profile's region).
        session = Session() if (mode is AuthMode.AMBIENT or not region) else None
        resolved_region = (
            region
            or env.get("AWS_REGION", "")
            or env.get("AWS_DEFAULT_REGION", "")
            or _session_region(session)
        )
        if not resolved_region and mode is AuthMode.API_KEY:
            resolved_region = API_KEY_DEFAULT_REGION
        if not resolved_region:
            raise BedrockConfigError(
                "bedrock: no AWS region: set the provider's BEDROCK_REGION, or AWS_REGION / "
                "AWS_DEFAULT_REGION, or a region in the AWS profile's config"
            )

        static = (
            Credentials(access_key, access_key_secret, session_token or None)
            if mode is AuthMode.STATIC_KEYS
            else None
        )
        return cls(
            mode=mode,
            region=resolved_region,
            base_url=base_url,
            static_credentials=static,
            api_key=api_key or None,
            session=session if mode is AuthMode.AMBIENT else None,
        )

    @classmethod
    def from_provider(
        cls,
        provider: Provider,
        *,
        api_key: str | None = None,
        env: Mapping[str, str] | None = None,
    ) -> BedrockAuth:
        """Build from a bedrock ``Provider``; API key mode uses ``api_key`` or the pool's first key.

        ``env`` as for :meth:`from_fields`. For key-pool failover, build one
        ``BedrockAuth`` per key (it is cheap).
        """
        return cls.from_fields(
            region=provider.bedrock_region,
            access_key=provider.bedrock_access_key,
            access_key_secret=provider.bedrock_access_key_secret,
            api_key=api_key if api_key is not None else (provider.keys[0] if provider.keys else ""),
            base_url=provider.bedrock_base_url,
            env=env,
        )

    def __repr__(self) -> str:
        if self.mode is AuthMode.API_KEY:
            who = f"api_key={mask_secret(self._api_key or '')}"
        elif self._static_credentials is not None:
            who = f"access_key={mask_secret(self._static_credentials.access_key)}"
        else:
            who = "credential chain"
        base = f", base_url={self.base_url!r}" if self.base_url else ""
        return f"BedrockAuth(mode={self.mode.value}, region={self.region!r}, {who}{base})"

    async def credentials(self) -> ReadOnlyCredentials:
        """Frozen credentials for one request (SigV4 modes only).

        Refreshable credentials are refreshed before expiry by botocore; when a
        refresh (or the first resolution) is due it runs in a worker thread.
        """
        if self._static_credentials is not None:
            return self._static_credentials.get_frozen_credentials()
        if self.mode is not AuthMode.AMBIENT:
            raise BedrockCredentialsError("bedrock: API key mode has no AWS credentials")
        creds = self._ambient or await self._resolve_once()
        if isinstance(creds, RefreshableCredentials) and creds.refresh_needed():
            return await trio.to_thread.run_sync(_frozen, creds)
        return creds.get_frozen_credentials()

    async def _resolve_once(self) -> Credentials:
        async with self._resolve_lock:  # one resolution, however many requests wait
            if self._ambient is None:
                self._ambient = await trio.to_thread.run_sync(self._resolve_chain)
            return self._ambient

    def _resolve_chain(self) -> Credentials:
        assert self._session is not None
        try:
            creds = self._session.get_credentials()
        except (BotoCoreError, ValueError) as exc:
            raise BedrockCredentialsError(
                f"bedrock: resolving AWS credentials failed: {exc}"
            ) from None
        if creds is None:
            raise BedrockCredentialsError(
                "bedrock: no AWS credentials found in the credential chain (environment, "
                "shared files/profiles, SSO, web identity, container endpoint, instance metadata)"
            )
        return creds

    async def sign(
        self, method: str, url: str, headers: Mapping[str, str], body: bytes
    ) -> list[tuple[str, str]]:
        """The headers to add to a request so that Bedrock accepts it.

        SigV4 modes sign ``method``, ``url`` (the final URL, query included),
        every header in ``headers`` and the body's SHA-256; each of those must
        then be sent unchanged (other headers may be added unsigned). Returned:
        ``host``, ``x-amz-date``, ``x-amz-security-token`` (temporary
        credentials only) and ``authorization``. API key mode returns only
        ``authorization: Bearer …``. Names are lower case.
        """
        if self.mode is AuthMode.API_KEY:
            return [("authorization", f"Bearer {self._api_key}")]
        creds = await self.credentials()
        request = AWSRequest(method=method.upper(), url=url, headers=dict(headers), data=body)
        if not any(k.lower() == "host" for k in headers):
            request.headers["host"] = _host_header(url)
        SigV4Auth(creds, SIGNING_SERVICE, self.region).add_auth(request)
        added = [("host", request.headers["host"]), ("x-amz-date", request.headers["X-Amz-Date"])]
        if creds.token:
            added.append(("x-amz-security-token", creds.token))
        added.append(("authorization", request.headers["Authorization"]))
        return added


def endpoint_url(auth: BedrockAuth) -> str:
    """The Bedrock runtime base URL: the provider's base URL, else the region's endpoint."""
    return auth.base_url or f"https://bedrock-runtime.{auth.region}.amazonaws.com"


def _frozen(creds: Credentials) -> ReadOnlyCredentials:
    try:
        return creds.get_frozen_credentials()
    except (BotoCoreError, RuntimeError, ValueError) as exc:
        raise BedrockCredentialsError(
            f"bedrock: refreshing AWS credentials failed: {exc}"
        ) from None


def _session_region(session: Session | None) -> str:
    if session is None:
        return ""
    try:
        return session.get_config_variable("region") or ""
    except ProfileNotFound as exc:
        raise BedrockConfigError(f"bedrock: {exc}") from None


def _host_header(url: str) -> str:
    """The Host header for ``url``: as botocore computes it (default ports omitted)."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    if ":" in host:
        host = f"[{host}]"
    if parts.port is not None and parts.port != {"http": 80, "https": 443}.get(parts.scheme):
        host = f"{host}:{parts.port}"
    return host
