"""What the auth layer adds per request: Globus tokens and API keys, cold and warm caches.

    python -m bench.auth_overhead [--calls 2000]

Runs in process against an embedded moto server (the local stack's AWS endpoint, with its call
counter) and the real globus-sdk, whose one HTTP answer (the token introspection) is recorded:
there is no Globus Auth offline, so the "cold" figure is the gateway's own work around a Globus
round trip, not the round trip itself (tens of ms against auth.globus.org). For each path:
p50/p99 of ``authenticate()`` and DynamoDB calls per request.

- warm, this process: the token's verdict is in memory (a warm Lambda container, the local API);
- warm, shared cache: another process introspected it (a new container): 1 DynamoDB read;
- cold: Globus introspection, then one DynamoDB write to share it.

Also the rate-limit admission for a limited user (one conditional UpdateItem), the other
DynamoDB call on the auth/limits path.
"""

from __future__ import annotations

import argparse
import os
import threading
import time
import uuid
from collections.abc import Callable
from typing import Any

import boto3
import globus_sdk
import responses
from globus_sdk.testing import RegisteredResponse, load_response

from bench.common import aws_calls, percentile
from chalicelib import limits
from chalicelib.auth.apikeys import ApiKeyAuthenticator
from chalicelib.auth.cache import IntrospectionCache
from chalicelib.auth.chain import ChainAuthenticator
from chalicelib.auth.globus import GlobusAuthenticator
from chalicelib.auth.policy import AuthPolicy
from chalicelib.auth.principal import Principal
from chalicelib.limits import LimitsConfig
from chalicelib.protocol import ChatCompletionRequest
from chalicelib.services import Services
from chalicelib.settings import Settings
from chalicelib.stores.limits import LimitStore
from offline.aws_server import build_server
from offline.resources import deploy
from offline.stack import free_port

GATEWAY = "11111111-2222-3333-4444-555555555555"


def _moto() -> str:
    port = free_port()
    server = build_server("127.0.0.1", port)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{port}"
    os.environ.update(
        AWS_ENDPOINT_URL=url,
        AWS_ACCESS_KEY_ID="test",
        AWS_SECRET_ACCESS_KEY="test",
        AWS_DEFAULT_REGION="us-east-1",
    )
    return url


def _introspection() -> dict[str, Any]:
    now = int(time.time())
    return {
        "active": True,
        "scope": f"https://auth.globus.org/scopes/{GATEWAY}/action_all",
        "sub": "alice-id",
        "username": "alice@anl.gov",
        "aud": [GATEWAY],
        "exp": now + 3600,
        "nbf": now - 1,
        "identity_set_detail": [{"id": "alice-id", "username": "alice@anl.gov"}],
        "session_info": {"authentications": {"alice-id": {}}},
    }


def _measure(
    name: str, url: str, calls: int, fn: Callable[[int], object], setup: Callable[[int], object]
) -> None:
    times: list[float] = []
    aws = 0
    for i in range(calls):
        setup(i)
        aws_calls(url, reset=True)
        start = time.perf_counter()
        fn(i)
        times.append((time.perf_counter() - start) * 1000)
        aws += aws_calls(url)["total"]
    print(
        f"  {name:<38} p50 {percentile(times, 50):7.3f} ms   p99 {percentile(times, 99):7.3f} ms"
        f"   DynamoDB calls/request {aws / calls:.2f}"
    )


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--calls", type=int, default=2000)
    args = parser.parse_args(argv)
    url = _moto()
    stage = f"bench{uuid.uuid4().hex[:6]}"
    session = boto3.Session(region_name="us-east-1")
    deploy(session.client("cloudformation"), session.client("dynamodb"), stage=stage)
    services = Services(Settings(stage=stage))
    cache_table = services.dynamodb.Table(services.settings.auth_cache_table_name)
    client = globus_sdk.ConfidentialAppAuthClient(GATEWAY, "secret")
    policy = AuthPolicy.create(GATEWAY, allowed_domains=["anl.gov"])

    def globus() -> GlobusAuthenticator:
        return GlobusAuthenticator(client, IntrospectionCache(cache_table), policy)

    key = services.keys.create("bench-user")
    chain = ChainAuthenticator(ApiKeyAuthenticator(services.keys), globus())
    cold_calls = max(20, args.calls // 20)
    tokens = [f"Ag{uuid.uuid4().hex}" for _ in range(cold_calls)]
    print(f"auth layer, {args.calls} warm / {cold_calls} cold calls each (moto server, in process)")
    with responses.RequestsMock(assert_all_requests_are_fired=False) as mock:
        load_response(
            RegisteredResponse(
                service="auth",
                path="/v2/oauth2/token/introspect",
                method="POST",
                json=_introspection(),
            ),
            requests_mock=mock,
        )
        chain.authenticate(tokens[0])
        _measure(
            "globus, warm (this process)",
            url,
            args.calls,
            lambda i: chain.authenticate(tokens[0]),
            lambda i: None,
        )
        fresh: list[GlobusAuthenticator] = []
        _measure(
            "globus, warm (shared DynamoDB cache)",
            url,
            cold_calls,
            lambda i: fresh[-1].authenticate(tokens[0]),
            lambda i: fresh.append(globus()),
        )
        before = len(mock.calls)
        _measure(
            "globus, cold (recorded introspection)",
            url,
            cold_calls,
            lambda i: chain.authenticate(tokens[i]),
            lambda i: None,
        )
        assert len(mock.calls) - before == cold_calls - 1  # tokens[0] was already cached
    chain.authenticate(key)
    _measure(
        "api key, warm (this process)",
        url,
        args.calls,
        lambda i: chain.authenticate(key),
        lambda i: None,
    )

    store = LimitStore(services.dynamodb.Table(services.settings.limits_table_name))
    config = LimitsConfig.model_validate({"default": {"requests_per_minute": 10**9}})
    req = ChatCompletionRequest.model_validate(
        {"model": "m", "messages": [{"role": "user", "content": "hi"}]}
    )
    who = Principal(id="bench-limited", username="bench-limited")

    def admit(i: int) -> None:
        now = time.time()
        outcome = store.admit(limits.plan(config, who, "m", req, now), now)
        assert outcome.refused is None

    _measure("rate-limit admission (requests/min)", url, cold_calls, admit, lambda i: None)


if __name__ == "__main__":
    main()
