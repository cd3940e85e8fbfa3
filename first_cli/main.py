"""``first``: the operator's command line, and a user's Globus sign-in.

first login                                   sign in with Globus (tokens kept in ~/.config/first)
first token                                   print a valid access token: OPENAI_API_KEY=$(first token)
first logout                                  revoke and forget the stored tokens
first keys create --user NAME [--service] [--group G ...] [--domain D]
                                              print a new API key (stored hashed)
first keys revoke --hash HASH
first resources deploy                        deploy infra/resources.yaml (local endpoint)
first functions register --endpoint NAME      register hpc_functions with Globus Compute
first proxy [--port P]                        a local OpenAI-compatible server that streams
                                              for real (WebSocket → SSE); see the README
first local endpoint stop|start NAME          take a local endpoint of `make up` down / back
first batch submit FILE.jsonl [--endpoint E] [--wait] | status ID | results ID [-o FILE]
            | cancel ID | ls                  OpenAI batches (OPENAI_BASE_URL, OPENAI_API_KEY)
first agent configure [AGENT] [--profile F]   a coding agent on the gateway: claude (its
                                              environment), codex (its config.toml)
"""

from __future__ import annotations

import argparse
import json
import sys

from chalicelib.errors import FirstError
from chalicelib.root import Root
from first_cli.user import UserTokens, user_tokens


def _keys_create(args: argparse.Namespace, services: Root) -> int:
    key = services.keys.create(
        args.user,
        kind="service" if args.service else "user",
        groups=args.group,
        domain=args.domain,
    )
    print(key)
    return 0


def _user_tokens(services: Root) -> UserTokens:
    s = services.settings
    return user_tokens(s.globus_native_client_id, s.globus_scope)


def _login(args: argparse.Namespace, services: Root) -> int:
    tokens = _user_tokens(services)
    tokens.login()
    print(f"Logged in; tokens kept in {tokens.path}", file=sys.stderr)
    return 0


def _token(args: argparse.Namespace, services: Root) -> int:
    print(_user_tokens(services).token())
    return 0


def _logout(args: argparse.Namespace, services: Root) -> int:
    _user_tokens(services).logout()
    return 0


def _keys_revoke(args: argparse.Namespace, services: Root) -> int:
    services.keys.revoke(args.hash)
    return 0


def _resources_deploy(args: argparse.Namespace, services: Root) -> int:
    from offline.resources import deploy

    outputs = deploy(
        services.client("cloudformation"),
        services.client("dynamodb"),
        stage=services.settings.stage,
        parameters={"VisibilityTimeout": str(services.settings.poller_visibility_timeout_s)},
    )
    print(json.dumps(outputs, indent=2))
    return 0


def _functions_register(args: argparse.Namespace, services: Root) -> int:
    from globus_compute_sdk import Client

    from chalicelib.registry import Registry
    from first_cli.registration import RegistryError, register_functions

    path = services.settings.registry_file
    # Check the target before Client(): constructing it starts a Globus login.
    try:
        names = [e.name for e in Registry.load(path).endpoints]
    except (OSError, ValueError) as exc:
        print(f"first: cannot read registry {path}: {exc}", file=sys.stderr)
        return 2
    if args.endpoint not in names:
        print(f"first: no endpoint {args.endpoint!r} in {path} (have: {names})", file=sys.stderr)
        return 2
    functions, jobs = None, None
    if args.module:
        import importlib

        module = importlib.import_module(args.module)
        functions = dict(module.FUNCTIONS)
        jobs = list(getattr(module, "JOBS", []))
    try:
        ids = register_functions(
            services.settings.registry_file, args.endpoint, Client(), functions=functions, jobs=jobs
        )
    except RegistryError as exc:
        print(f"first: {exc}", file=sys.stderr)
        return 2
    print(json.dumps(ids, indent=2))
    return 0


def _local_endpoint(args: argparse.Namespace, services: Root) -> int:
    from first_cli.local import StackControlError, endpoint

    try:
        print(endpoint(services.settings.home, args.verb, args.name))
    except StackControlError as exc:
        print(f"first: {exc}", file=sys.stderr)
        return 1
    return 0


def _proxy(args: argparse.Namespace, services: Root) -> int:
    import os

    from first_cli.proxy import serve

    gateway = args.gateway or os.environ.get("FIRST_API_URL") or os.environ.get("OPENAI_BASE_URL")
    ws_url = args.ws_url or os.environ.get("FIRST_WS_URL")
    if not gateway or not ws_url:
        print("first: set --gateway and --ws-url (or FIRST_API_URL, FIRST_WS_URL)", file=sys.stderr)
        return 2
    serve(gateway, ws_url, os.environ.get("OPENAI_API_KEY"), args.port, args.host)
    return 0


def _batch(args: argparse.Namespace, services: Root) -> int:
    from first_cli.batch import run

    return run(args.action, vars(args))


def _jobs(args: argparse.Namespace, services: Root) -> int:
    from first_cli.jobs import run

    return run(args.action, vars(args))


def _agent_configure(args: argparse.Namespace, services: Root) -> int:
    import os
    from pathlib import Path

    from first_cli import agent

    if not args.agent:
        print(agent.listing(), end="")
        return 0
    if args.agent not in agent.AGENTS:
        print(
            f"first: unknown agent {args.agent!r}; known: {sorted(agent.AGENTS)}", file=sys.stderr
        )
        return 2
    gateway = args.gateway or os.environ.get("FIRST_API_URL") or os.environ.get("OPENAI_BASE_URL")
    if not gateway:
        print("first: set --gateway (or FIRST_API_URL / OPENAI_BASE_URL)", file=sys.stderr)
        return 2
    key = args.key or os.environ.get("OPENAI_API_KEY") or os.environ.get("ANTHROPIC_API_KEY")
    if not key:
        key = _user_tokens(services).token()  # a Globus token (`first login` first)
    # The local stack's tiny-agent ends its turn as a chat model does (tiny-chat writes until
    # max_tokens, which agents report as an error).
    model = args.model or os.environ.get("FIRST_MODEL") or "first/tiny-agent"
    if args.agent == "codex":
        # Codex reads its provider from config.toml, not from the environment.
        path = agent.configure_codex(agent.codex_home(args.codex_home), gateway, model, key)
        print(f"Codex configured: {path} (try: codex exec --skip-git-repo-check 'hello')")
        return 0
    text = agent.exports(args.agent, gateway, key, model)
    if args.profile:
        agent.write_profile(Path(args.profile).expanduser(), args.agent, text)
        print(f"Wrote the {args.agent} environment to {args.profile}", file=sys.stderr)
    else:
        print(text, end="")
    return 0


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="first", description="FIRST gateway operations")
    p.add_argument("--stage", help="stage (default: FIRST_STAGE or 'local')")
    sub = p.add_subparsers(dest="command", required=True)

    sub.add_parser("login", help="sign in with Globus").set_defaults(run=_login)
    sub.add_parser("token", help="print a valid access token").set_defaults(run=_token)
    sub.add_parser("logout", help="revoke and forget the stored tokens").set_defaults(run=_logout)

    keys = sub.add_parser("keys", help="API keys").add_subparsers(dest="action", required=True)
    create = keys.add_parser("create", help="create an API key and print it once")
    create.add_argument("--user", required=True)
    create.add_argument("--service", action="store_true", help="a service account's key")
    create.add_argument("--group", action="append", help="a group the key's holder is in")
    create.add_argument("--domain", help="the key holder's identity provider domain")
    create.set_defaults(run=_keys_create)
    revoke = keys.add_parser("revoke", help="revoke a key by its SHA-256 hash")
    revoke.add_argument("--hash", required=True)
    revoke.set_defaults(run=_keys_revoke)

    res = sub.add_parser("resources", help="AWS resources").add_subparsers(
        dest="action", required=True
    )
    res.add_parser("deploy", help="deploy infra/resources.yaml").set_defaults(run=_resources_deploy)

    fns = sub.add_parser("functions", help="Globus Compute functions").add_subparsers(
        dest="action", required=True
    )
    reg = fns.add_parser("register", help="register hpc_functions; write ids to the registry")
    reg.add_argument("--endpoint", required=True, help="endpoint name in the stage's registry")
    reg.add_argument(
        "--module",
        help="a module of your own: its FUNCTIONS, and its JOBS declared as jobs (docs/hpc.md)",
    )
    # Also accepted after the subcommand: `first functions register --stage prod ...`.
    reg.add_argument("--stage", dest="stage_override", help=argparse.SUPPRESS)
    reg.set_defaults(run=_functions_register)

    local = sub.add_parser("local", help="the offline stack (make up)").add_subparsers(
        dest="action", required=True
    )
    ep = local.add_parser("endpoint", help="stop or start one local endpoint (a 'cluster')")
    ep.add_argument("verb", choices=["stop", "start"])
    ep.add_argument("name", help="its name in infra/deployments/local.json, e.g. local-b")
    ep.set_defaults(run=_local_endpoint)
    proxy = sub.add_parser("proxy", help="local OpenAI-compatible server that streams for real")
    proxy.add_argument("--port", type=int, default=8088)
    proxy.add_argument("--host", default="127.0.0.1")
    proxy.add_argument(
        "--gateway", help="the gateway's URL (default FIRST_API_URL/OPENAI_BASE_URL)"
    )
    proxy.add_argument("--ws-url", help="the WebSocket API's URL (default FIRST_WS_URL)")
    proxy.set_defaults(run=_proxy)

    from first_cli.batch import ROUTES

    batches = sub.add_parser("batch", help="OpenAI batches through the gateway")
    batches.set_defaults(run=_batch)
    batch = batches.add_subparsers(dest="action", required=True)
    bsubmit = batch.add_parser("submit", help="upload a JSONL file and start a batch")
    bsubmit.add_argument("file")
    bsubmit.add_argument("--endpoint", choices=ROUTES, default=ROUTES[0])
    bsubmit.add_argument("--wait", action="store_true", help="show progress until it is final")
    for verb, text in (("status", "the batch object"), ("cancel", "cancel a batch")):
        batch.add_parser(verb, help=text).add_argument("id")
    bresults = batch.add_parser("results", help="the output lines (and error lines)")
    bresults.add_argument("id")
    bresults.add_argument("-o", "--output", help="write to FILE (errors to FILE.errors.jsonl)")
    batch.add_parser("ls", help="your batches, newest first").add_argument(
        "--limit", type=int, default=20
    )

    jobs_parser = sub.add_parser("jobs", help="HPC functions as jobs (docs/hpc.md)")
    jobs_parser.set_defaults(run=_jobs)
    jobs = jobs_parser.add_subparsers(dest="action", required=True)
    jsubmit = jobs.add_parser("submit", help="run a function as a job")
    jsubmit.add_argument("function", help="its name (first jobs functions lists them)")
    jsubmit.add_argument("--input", help="the input, a JSON object (or @FILE)")
    jsubmit.add_argument("--file", action="append", help="a file to upload and pass (repeatable)")
    jsubmit.add_argument("--wait", action="store_true", help="show progress; print the result")
    for verb, text in (("status", "the job object"), ("cancel", "cancel a job")):
        jobs.add_parser(verb, help=text).add_argument("id")
    jresults = jobs.add_parser("results", help="the job's result (JSON)")
    jresults.add_argument("id")
    jresults.add_argument("-o", "--output", help="write to FILE")
    jobs.add_parser("ls", help="your jobs, newest first").add_argument(
        "--limit", type=int, default=20
    )
    jobs.add_parser("functions", help="the functions you may call, with their input schemas")

    agents = sub.add_parser("agent", help="coding agents on this gateway").add_subparsers(
        dest="action", required=True
    )
    configure = agents.add_parser("configure", help="print (or write) an agent's environment")
    configure.add_argument("agent", nargs="?", help="claude, codex; none lists the known agents")
    configure.add_argument(
        "--gateway", help="the gateway's URL (default FIRST_API_URL/OPENAI_BASE_URL)"
    )
    configure.add_argument("--key", help="an API key (default OPENAI_API_KEY, else `first token`)")
    configure.add_argument("--model", help="the model (default FIRST_MODEL, else first/tiny-agent)")
    configure.add_argument("--profile", help="append to this shell profile instead of printing")
    configure.add_argument(
        "--codex-home", help="codex: Codex's home (default CODEX_HOME or ~/.codex)"
    )
    configure.set_defaults(run=_agent_configure)
    return p


def main(argv: list[str] | None = None) -> int:
    from chalicelib.settings import Settings

    args = parser().parse_args(argv)
    stage = getattr(args, "stage_override", None) or args.stage
    settings = Settings(stage=stage) if stage else Settings()
    try:
        return int(args.run(args, Root(settings)))
    except FirstError as exc:
        print(f"first: {exc.message}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
