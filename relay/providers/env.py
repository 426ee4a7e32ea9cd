"""Providers from the environment: indexed providers and the legacy options.

Indexed providers are ``CODER_AI_GATEWAY_PROVIDER_<N>_<KEY>`` (deprecated
alias ``CODER_AIBRIDGE_PROVIDER_<N>_<KEY>``). The legacy single-provider
options (``CODER_AI_GATEWAY_OPENAI_KEY`` ...) come from the resolved
``Options`` and define providers named ``openai``, ``anthropic`` and
``bedrock``. Pure: no I/O besides the ``warn`` callback, so every rule is a
unit test. The result only seeds the database (``store.seed_providers_from_env``).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping

from relay.errors import ConfigurationError
from relay.options import (
    NEW_ENV_PREFIX,
    OLD_ENV_PREFIX,
    PROVIDER_KEYS,
    Options,
    closest_env_name,
    lookup_env,
    parse_bool,
)
from relay.providers.types import (
    DEFAULT_BASE_URLS,
    DEFAULT_BEDROCK_MODEL,
    DEFAULT_BEDROCK_SMALL_FAST_MODEL,
    NAME_RE,
    RESERVED_NAMES,
    Provider,
    ProviderType,
    keys_problem,
)

Warn = Callable[[str], None]

_KNOWN_KEYS = frozenset(key for key, _ in PROVIDER_KEYS)
_BEDROCK_KEYS = tuple(key for key in _KNOWN_KEYS if key.startswith("BEDROCK_"))
_INDEXED_RE = re.compile(r"^(CODER_AI_GATEWAY_|CODER_AIBRIDGE_)PROVIDER_([^_]+)_(.+)$")


class ProviderConfigError(ConfigurationError, ValueError):
    """The environment's providers cannot be used; each line names the variables."""

    def __init__(self, problems: list[str]) -> None:
        self.problems = problems
        super().__init__("\n".join(problems))


def _var(index: int, key: str) -> str:
    return f"{NEW_ENV_PREFIX}PROVIDER_{index}_{key}"


def _alias_var(index: int, key: str) -> str:
    return f"{OLD_ENV_PREFIX}PROVIDER_{index}_{key}"


class _Indexed:
    """The raw variables of one index, read with alias handling."""

    def __init__(self, index: int, env: Mapping[str, str], warn: Warn) -> None:
        self.index = index
        self.values: dict[str, str] = {}
        self.sources: dict[str, str] = {}
        for key in sorted(_KNOWN_KEYS):
            value, source = lookup_env(env, _var(index, key), _alias_var(index, key), warn)
            # An empty variable counts as unset: `KEY=` must not clash with KEYS.
            if value is not None and source is not None and value.strip():
                self.values[key] = value.strip()
                self.sources[key] = source

    def get(self, key: str) -> str:
        return self.values.get(key, "")

    def var(self, key: str) -> str:
        """The variable that set ``key`` (or its new name when unset)."""
        return self.sources.get(key, _var(self.index, key))


def _scan_indices(env: Mapping[str, str], warn: Warn) -> tuple[dict[int, list[str]], list[str]]:
    """Every index mentioned by a variable, with its variables; bad indices are problems."""
    indices: dict[int, list[str]] = {}
    problems: list[str] = []
    for name in sorted(env):
        m = _INDEXED_RE.match(name)
        if not m:
            continue
        raw_index, key = m.group(2), m.group(3)
        if not raw_index.isdigit() or (raw_index != "0" and raw_index.startswith("0")):
            problems.append(f"{name}: provider index {raw_index!r} is not a number like 0, 1, 2")
            continue
        index = int(raw_index)
        indices.setdefault(index, []).append(name)
        if key not in _KNOWN_KEYS:
            known = ", ".join(k for k, _ in PROVIDER_KEYS)
            close = closest_env_name(name)
            hint = f"did you mean {close}? " if close else ""
            warn(f"WARN: {name} is not a provider setting and is ignored ({hint}known: {known}).")
    return indices, problems


def _split_keys(raw: str) -> list[str]:
    return [part.strip() for part in raw.split(",")]


def _indexed_provider(raw: _Indexed, problems: list[str], warn: Warn) -> Provider | None:
    start = len(problems)
    type_text = raw.get("TYPE").lower()
    if not type_text:
        problems.append(f"{raw.var('TYPE')} is required (openai, anthropic or bedrock)")
        return None
    try:
        ptype = ProviderType(type_text)
    except ValueError:
        problems.append(
            f"{raw.var('TYPE')}={raw.get('TYPE')!r}: unknown TYPE (use openai, anthropic or bedrock)"
        )
        return None

    name = raw.get("NAME") or ptype.value
    if not NAME_RE.match(name):
        problems.append(
            f"{raw.var('NAME')}={name!r}: a name must match ^[a-z0-9]+(-[a-z0-9]+)*$ "
            "(lower-case letters, digits, single hyphens)"
        )
    elif name in RESERVED_NAMES:
        problems.append(f"{raw.var('NAME')}={name!r}: the name is reserved (the admin API)")

    keys: list[str] = []
    if raw.get("KEY") and raw.get("KEYS"):
        problems.append(f"{raw.var('KEY')} and {raw.var('KEYS')} are both set: use one of them")
    elif raw.get("KEYS"):
        keys = _split_keys(raw.get("KEYS"))
        problem = keys_problem(keys)
        if problem:
            problems.append(f"{raw.var('KEYS')}: {problem}")
    elif raw.get("KEY"):
        keys = [raw.get("KEY")]

    base_url = raw.get("BASE_URL")
    bedrock_base_url = raw.get("BEDROCK_BASE_URL")
    if ptype is ProviderType.BEDROCK:
        key_var = raw.var("KEYS") if raw.get("KEYS") else raw.var("KEY")
        access = [k for k in ("BEDROCK_ACCESS_KEY", "BEDROCK_ACCESS_KEY_SECRET") if raw.get(k)]
        if keys and access:
            problems.append(
                f"{key_var} and {raw.var(access[0])} are both set: a bedrock provider uses "
                "either Bedrock API keys or an AWS access key pair"
            )
        elif len(access) == 1:
            missing = ({"BEDROCK_ACCESS_KEY", "BEDROCK_ACCESS_KEY_SECRET"} - set(access)).pop()
            problems.append(f"{raw.var(access[0])} is set but {raw.var(missing)} is not")
        # For bedrock, BASE_URL means the runtime endpoint, like BEDROCK_BASE_URL.
        if base_url and bedrock_base_url and base_url != bedrock_base_url:
            problems.append(
                f"{raw.var('BASE_URL')} and {raw.var('BEDROCK_BASE_URL')} differ: "
                "for a bedrock provider set only BEDROCK_BASE_URL"
            )
        bedrock_base_url = bedrock_base_url or base_url
        base_url = ""
    else:
        for key in _BEDROCK_KEYS:
            if raw.get(key):
                warn(f"WARN: {raw.var(key)} is ignored: the provider's TYPE is {ptype.value}.")
        base_url = base_url or DEFAULT_BASE_URLS[ptype]

    responses_websocket = True
    if raw.get("RESPONSES_WEBSOCKET"):
        try:
            responses_websocket = parse_bool(raw.get("RESPONSES_WEBSOCKET"))
        except ValueError as exc:
            problems.append(f"{raw.var('RESPONSES_WEBSOCKET')}: {exc}")
    if len(problems) > start:
        return None
    is_bedrock = ptype is ProviderType.BEDROCK
    return Provider(
        name=name,
        type=ptype,
        base_url=base_url,
        keys=tuple(keys),
        bedrock_region=raw.get("BEDROCK_REGION") if is_bedrock else "",
        bedrock_access_key=raw.get("BEDROCK_ACCESS_KEY") if is_bedrock else "",
        bedrock_access_key_secret=raw.get("BEDROCK_ACCESS_KEY_SECRET") if is_bedrock else "",
        bedrock_model=(raw.get("BEDROCK_MODEL") or DEFAULT_BEDROCK_MODEL) if is_bedrock else "",
        bedrock_small_fast_model=(
            (raw.get("BEDROCK_SMALL_FAST_MODEL") or DEFAULT_BEDROCK_SMALL_FAST_MODEL)
            if is_bedrock
            else ""
        ),
        bedrock_base_url=bedrock_base_url if is_bedrock else "",
        responses_websocket=responses_websocket,
        source="env",
    )


def _legacy_providers(options: Options, problems: list[str]) -> list[tuple[Provider, str]]:
    """Providers defined by the legacy single-provider options, each with a variable naming it.

    A legacy provider exists when one of its options was set (not left at its
    default): OPENAI_KEY or OPENAI_BASE_URL define ``openai``; ANTHROPIC_KEY or
    ANTHROPIC_BASE_URL define ``anthropic``; BEDROCK_REGION, BEDROCK_ACCESS_KEY,
    BEDROCK_ACCESS_KEY_SECRET or BEDROCK_BASE_URL define ``bedrock`` (the model
    options alone do not, since they have defaults).
    """

    def set_by(*attrs: str) -> str | None:
        for attr in attrs:
            source = options.source(attr)
            if source != "default" and str(getattr(options, attr)):
                return source
        return None

    found: list[tuple[Provider, str]] = []
    for ptype, key_attr, url_attr in (
        (ProviderType.OPENAI, "openai_key", "openai_base_url"),
        (ProviderType.ANTHROPIC, "anthropic_key", "anthropic_base_url"),
    ):
        var = set_by(key_attr, url_attr)
        if var is None:
            continue
        key = str(getattr(options, key_attr)).strip()
        base_url = str(getattr(options, url_attr)).strip() or DEFAULT_BASE_URLS[ptype]
        found.append(
            (
                Provider(
                    name=ptype.value, type=ptype, base_url=base_url, keys=(key,) if key else ()
                ),
                var,
            )
        )

    var = set_by(
        "bedrock_region", "bedrock_access_key", "bedrock_access_key_secret", "bedrock_base_url"
    )
    if var is not None:
        access_key = str(options.bedrock_access_key).strip()
        secret = str(options.bedrock_access_key_secret).strip()
        if bool(access_key) != bool(secret):
            have, lack = (
                ("bedrock_access_key", "bedrock_access_key_secret")
                if access_key
                else ("bedrock_access_key_secret", "bedrock_access_key")
            )
            problems.append(
                f"{options.source(have)} is set but {NEW_ENV_PREFIX}{lack.upper()} is not"
            )
        found.append(
            (
                Provider(
                    name="bedrock",
                    type=ProviderType.BEDROCK,
                    bedrock_region=str(options.bedrock_region).strip(),
                    bedrock_access_key=access_key,
                    bedrock_access_key_secret=secret,
                    bedrock_model=str(options.bedrock_model).strip() or DEFAULT_BEDROCK_MODEL,
                    bedrock_small_fast_model=str(options.bedrock_small_fast_model).strip()
                    or DEFAULT_BEDROCK_SMALL_FAST_MODEL,
                    bedrock_base_url=str(options.bedrock_base_url).strip(),
                ),
                var,
            )
        )
    return found


def providers_from_env(
    env: Mapping[str, str], warn: Warn, options: Options | None = None
) -> list[Provider]:
    """All providers the environment defines: legacy ones first, then indexed by index.

    ``options`` are the resolved options (flags included) holding the legacy
    single-provider settings; without them they are read from ``env``.
    Raises ``ProviderConfigError`` listing every problem found.
    """
    if options is None:
        from relay.options import load_options

        options = load_options(env, warn=warn)
    problems: list[str] = []
    indices, index_problems = _scan_indices(env, warn)
    problems += index_problems

    expected = 0
    for index in sorted(indices):
        if index != expected:
            missing = ", ".join(str(i) for i in range(expected, index))
            problems.append(
                f"{', '.join(indices[index])}: provider indices must be contiguous from 0, "
                f"but index {missing} is missing"
            )
            break
        expected += 1

    named: dict[str, str] = {}  # provider name -> the variable that set it
    result: list[Provider] = []
    for legacy_provider, var in _legacy_providers(options, problems):
        named[legacy_provider.name] = var
        result.append(legacy_provider)
    for index in sorted(indices):
        raw = _Indexed(index, env, warn)
        provider = _indexed_provider(raw, problems, warn)
        if provider is None:
            continue
        var = raw.var("NAME") if raw.get("NAME") else raw.var("TYPE")
        if provider.name in named:
            other = named[provider.name]
            legacy = not _INDEXED_RE.match(other)
            problems.append(
                f"{other} and {var} both define a provider named {provider.name!r}"
                + (
                    ": rename the indexed provider or drop the legacy option"
                    if legacy
                    else ": names must be unique"
                )
            )
            continue
        named[provider.name] = var
        result.append(provider)

    if problems:
        raise ProviderConfigError(problems)
    return result
