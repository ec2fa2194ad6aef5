"""The ``zaindari`` command: developer entry points (``zaindari aws up``, ``zaindari invoke``,
``zaindari retrain``).

Each command group registers a builder in :data:`COMMANDS`; a builder adds its subparser and sets
``handler`` (a function of the parsed arguments returning an exit code). Heavy imports happen
inside handlers, so ``zaindari --help`` stays fast.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
import time
import traceback
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, TextIO

if TYPE_CHECKING:
    from zaindari.infra.local_aws import LocalAws
    from zaindari.infra.provision import FunctionSettings

Handler = Callable[[argparse.Namespace], int]
CommandBuilder = Callable[["argparse._SubParsersAction[argparse.ArgumentParser]"], None]


def _aws_up(args: argparse.Namespace) -> int:
    from zaindari.infra.local_aws import LocalAwsError, serve_forever

    try:
        return serve_forever(args.host, args.port)
    except LocalAwsError as error:
        print(f"zaindari aws up: {error}", file=sys.stderr)
        return 1


def _build_aws(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    from zaindari.infra.local_aws import DEFAULT_HOST, DEFAULT_PORT

    aws = commands.add_parser("aws", help="the embedded AWS (moto in server mode)")
    aws_commands = aws.add_subparsers(dest="aws_command", metavar="<command>", required=True)
    up = aws_commands.add_parser(
        "up",
        help="run moto server in the foreground until Ctrl-C",
        description="Serve S3, DynamoDB, SQS, SNS, EventBridge, ... locally on the LocalStack port.",
    )
    up.add_argument("--host", default=DEFAULT_HOST, help="address to listen on (default: %(default)s)")
    up.add_argument("--port", type=int, default=DEFAULT_PORT, help="port to listen on (default: %(default)s)")
    up.set_defaults(handler=_aws_up)


# -- zaindari invoke: `sam local invoke` without Docker, against the embedded AWS


class InvokeSetupError(RuntimeError):
    """The invocation could not be prepared (no template, bad event file, AWS unreachable ...)."""


def _find_template(explicit: Path | None) -> Path:
    if explicit is not None:
        if not explicit.is_file():
            raise InvokeSetupError(f"{explicit}: no such template")
        return explicit.resolve()
    here = Path.cwd().resolve()
    for folder in (here, *here.parents):
        if (folder / "template.yaml").is_file():
            return folder / "template.yaml"
    raise InvokeSetupError(f"no template.yaml in {here} or its parents (use --template)")


def _read_event(source: str) -> Any:
    try:
        text = sys.stdin.read() if source == "-" else Path(source).read_text(encoding="utf-8")
    except OSError as exc:
        raise InvokeSetupError(f"{source}: cannot be read: {exc}") from exc
    try:
        return json.loads(text)
    except ValueError as exc:
        raise InvokeSetupError(f"{source}: not JSON: {exc}") from exc


def _endpoint_answers(url: str) -> bool:
    """A moto server, or LocalStack (its health endpoint), answers at ``url``."""
    import urllib.request

    from zaindari.infra.local_aws import is_moto_server

    if is_moto_server(url):
        return True
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    try:
        with opener.open(f"{url.rstrip('/')}/_localstack/health", timeout=1.0) as response:
            return int(response.status) == 200
    except (OSError, ValueError):
        return False


def _choose_endpoint(explicit: str | None, err: TextIO) -> tuple[str, LocalAws | None]:
    """``--endpoint``, else ``$AWS_ENDPOINT_URL`` when it answers, else moto started here."""
    from zaindari.infra.local_aws import start_local_aws

    if explicit:
        if not _endpoint_answers(explicit):
            raise InvokeSetupError(f"no moto or LocalStack answers at --endpoint {explicit}")
        return explicit.rstrip("/"), None
    from_env = os.environ.get("AWS_ENDPOINT_URL", "").strip()
    if from_env and _endpoint_answers(from_env):
        return from_env.rstrip("/"), None
    if from_env:
        print(
            f"zaindari invoke: nothing answers at AWS_ENDPOINT_URL={from_env}; starting moto here", file=err
        )
    server = start_local_aws("127.0.0.1", 0, reuse_existing=False)
    return server.endpoint_url, server


@contextlib.contextmanager
def _environment(values: dict[str, str], remove: Sequence[str]) -> Iterator[None]:
    """``os.environ`` with ``values`` set and ``remove`` unset, restored afterwards."""
    saved = dict(os.environ)
    for name in remove:
        os.environ.pop(name, None)
    os.environ.update(values)
    try:
        yield
    finally:
        os.environ.clear()
        os.environ.update(saved)


# Settings from a developer's shell that would send the function's requests elsewhere.
_AWS_ENV_TO_CLEAR = ("AWS_PROFILE", "AWS_DEFAULT_PROFILE", "AWS_ROLE_ARN", "AWS_WEB_IDENTITY_TOKEN_FILE")


def _invoke(args: argparse.Namespace) -> int:
    out = sys.stdout  # the response only: logs (Powertools writes to stdout) go to stderr
    err = sys.stderr
    try:
        template_path = _find_template(args.template)
        root = template_path.parent
        app_path = root / "functions" / args.function / "app.py"
        if not app_path.is_file():
            raise InvokeSetupError(f"{app_path}: no such function (FN is a folder under functions/)")
        event = _read_event(args.event)
    except InvokeSetupError as exc:
        print(f"zaindari invoke: {exc}", file=err)
        return 2

    import logging

    logging.getLogger("werkzeug").setLevel(logging.WARNING)  # one line per moto request otherwise
    started = time.perf_counter()
    server: LocalAws | None = None
    try:
        with contextlib.redirect_stdout(err):
            server_endpoint, server = _choose_endpoint(args.endpoint, err)
            prepared = _prepare(args, template_path, server_endpoint, err)
            event = _seed_drops(event, template_path.parent, server_endpoint, prepared.region, err)
            ready = time.perf_counter()
            with _environment(prepared.env, _AWS_ENV_TO_CLEAR):
                try:
                    from zaindari.infra.lambda_local import LocalLambdaContext, import_function

                    module = import_function(app_path, args.function)
                    initialised = time.perf_counter()
                    context = LocalLambdaContext(
                        prepared.function.function_name,
                        memory_mb=prepared.function.memory_mb,
                        timeout_s=prepared.function.timeout_s,
                        region=prepared.region,
                        account_id=prepared.account,
                    )
                    response = module.lambda_handler(event, context)
                except Exception:
                    traceback.print_exc(file=err)
                    print(f"zaindari invoke: {args.function} raised (as Lambda would report it)", file=err)
                    return 1
            done = time.perf_counter()
    except InvokeSetupError as exc:
        print(f"zaindari invoke: {exc}", file=err)
        return 2
    except Exception as exc:  # template or provisioning failure: name it, no traceback wall
        print(f"zaindari invoke: {type(exc).__name__}: {exc}", file=err)
        return 2
    finally:
        if server is not None:
            server.stop()
    print(
        f"zaindari invoke: {prepared.function.logical_id} on {prepared.endpoint_note}; "
        f"setup {ready - started:.2f} s ({prepared.model_note}), init {initialised - ready:.2f} s, "
        f"handler {1000 * (done - initialised):.0f} ms",
        file=err,
    )
    out.write(json.dumps(response, indent=2, default=str) + "\n")
    out.flush()
    return 0


@dataclass(frozen=True)
class _Prepared:
    function: FunctionSettings
    region: str
    account: str
    env: dict[str, str]
    endpoint_note: str
    model_note: str


def _prepare(args: argparse.Namespace, template_path: Path, endpoint: str, err: TextIO) -> _Prepared:
    """Provision the template, resolve the function's environment, make sure its model exists."""
    from zaindari.example_model import example_model_bundle
    from zaindari.infra.aws import DEFAULT_REGION
    from zaindari.infra.local_aws import is_moto_server, local_client_factory, local_environment
    from zaindari.infra.provision import provision, seed_model_bundle

    region = os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION") or DEFAULT_REGION
    factory = local_client_factory(endpoint, region)
    t0 = time.perf_counter()
    stack = provision(factory, template_path, stack_name=args.stack_name)
    provisioned_s = time.perf_counter() - t0
    function = stack.function_settings(args.function)
    cache_dir = args.cache_dir or template_path.parent / ".zaindari" / "models"

    env = dict(function.environment)
    model = args.model or env.get("ZAINDARI_MODEL_PATH")
    if model and not model.startswith("s3://"):
        folder = Path(model).expanduser().resolve()
        if not (folder / "MANIFEST.json").is_file():
            raise InvokeSetupError(f"{folder}: not a model bundle (no MANIFEST.json)")
        model, model_note = str(folder), f"model {folder}"
    elif model:
        uploaded = seed_model_bundle(factory, model, lambda: example_model_bundle(cache_dir))
        model_note = f"model {model}" + (" (uploaded the fitted example model)" if uploaded else "")
    else:
        model = str(example_model_bundle(cache_dir))
        model_note = f"model {model}"
        print(
            f"zaindari invoke: {function.logical_id} sets no ZAINDARI_MODEL_PATH in template.yaml; "
            "using the fitted example model",
            file=err,
        )
    env["ZAINDARI_MODEL_PATH"] = model
    lambda_env = {
        "AWS_LAMBDA_FUNCTION_NAME": function.function_name,
        "AWS_LAMBDA_FUNCTION_MEMORY_SIZE": str(function.memory_mb),
        "AWS_LAMBDA_FUNCTION_VERSION": "$LATEST",
        "AWS_LAMBDA_LOG_GROUP_NAME": f"/aws/lambda/{function.function_name}",
        "POWERTOOLS_TRACE_DISABLED": "true",  # no X-Ray daemon here
    }
    kind = "moto" if is_moto_server(endpoint) else "LocalStack"
    return _Prepared(
        function=function,
        region=region,
        account=stack.account_id,
        # the function's own settings, then what points it at the local AWS (always wins)
        env={**lambda_env, **env, **local_environment(endpoint, region)},
        endpoint_note=f"{kind} at {endpoint}, {len(stack.resources)} resources ({provisioned_s:.2f} s)",
        model_note=model_note,
    )


def _seed_drops(event: Any, root: Path, endpoint: str, region: str, err: TextIO) -> Any:
    """The objects an S3 event names, uploaded from ``events/data/`` when missing (events/README.md)."""
    from zaindari.infra.local_aws import local_client_factory
    from zaindari.infra.local_drops import seed_drop_objects

    event, notes = seed_drop_objects(local_client_factory(endpoint, region), event, root / "events" / "data")
    for note in notes:
        print(f"zaindari invoke: {note}", file=err)
    return event


def _build_invoke(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    invoke = commands.add_parser(
        "invoke",
        help="run a function once on an event file, against the embedded AWS",
        description=(
            "Like `sam local invoke -e EVENT`, without Docker: provision template.yaml's data "
            "resources in the embedded AWS, set the function's environment from the template, "
            "call its lambda_handler and print the response (JSON) on stdout; logs go to stderr. "
            "Exit 0 when the handler returned, 1 when it raised, 2 when nothing could be invoked."
        ),
    )
    invoke.add_argument("function", metavar="FN", help="the function's folder under functions/ (score_event)")
    invoke.add_argument("event", metavar="EVENT", help="the event JSON file (events/...), or - for stdin")
    invoke.add_argument(
        "--endpoint",
        metavar="URL",
        help="the embedded AWS to use (default: $AWS_ENDPOINT_URL when moto or LocalStack answers "
        "there, else moto started in this process for the call)",
    )
    invoke.add_argument(
        "--model",
        metavar="PATH",
        help="model bundle to score with, a folder or s3:// prefix (default: the function's "
        "ZAINDARI_MODEL_PATH, seeded with a fitted example model when S3 has none)",
    )
    invoke.add_argument(
        "--template", type=Path, help="SAM template (default: template.yaml here or in a parent folder)"
    )
    invoke.add_argument(
        "--stack-name", default="zaindari", help="prefix of resource names (default: %(default)s)"
    )
    invoke.add_argument(
        "--cache-dir",
        type=Path,
        help="where the fitted example model is cached (default: .zaindari/models next to the template)",
    )
    invoke.set_defaults(handler=_invoke)


# -- zaindari retrain: the start_retraining use case by hand


def _retrain(args: argparse.Namespace) -> int:
    import datetime as dt
    import uuid

    from pydantic import ValidationError

    from zaindari.infra.wiring import build_retraining, client_factory
    from zaindari.ports import PortError
    from zaindari.retraining import RetrainingRequest
    from zaindari.settings import Settings, SettingsError

    try:
        request = RetrainingRequest(
            model=args.model,
            trigger="manual",
            request_id=f"cli-{uuid.uuid4()}",
            requested_at=dt.datetime.now(dt.UTC),
            start=args.start,
            end=args.end,
            evidence={"reason": args.reason} if args.reason else None,
            requested_by=f"cli:{os.environ.get('USER', 'unknown')}",
        )
        retraining = build_retraining(Settings.from_env(os.environ), client_factory())
        outcome = retraining.request(request)
    except ValidationError as exc:
        problems = "; ".join(e["msg"].removeprefix("Value error, ") for e in exc.errors(include_url=False))
        print(f"zaindari retrain: {problems}", file=sys.stderr)
        return 2
    except SettingsError as exc:
        print(f"zaindari retrain: {exc}", file=sys.stderr)
        return 2
    except PortError as exc:
        print(f"zaindari retrain: nothing started, a downstream service failed: {exc}", file=sys.stderr)
        return 1
    print(json.dumps(outcome.model_dump(mode="json", exclude_none=True), indent=2))
    return 1 if outcome.status == "start_failed" else 0


def _build_retrain(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    retrain = commands.add_parser(
        "retrain",
        help="start a retraining run for a model (or record the request on its active run)",
        description=(
            "What POST /retrain does, from a shell: start the build_training_set job for MODEL on "
            "raw telemetry from START to END (inclusive, UTC days), at most one run per model. "
            "Settings come from ZAINDARI_* variables (ZAINDARI_RUNS_TABLE, ZAINDARI_LAKE_BUCKET, ...), "
            "AWS from the standard environment (AWS_ENDPOINT_URL for the embedded AWS). Prints the "
            "outcome as JSON; exit 0 when started or recorded, 1 when the start failed (alerted), "
            "2 on bad arguments or settings."
        ),
    )
    retrain.add_argument("--model", required=True, help="the model's name (its spec's name)")
    retrain.add_argument("--start", required=True, type=_iso_date, help="first day of data, YYYY-MM-DD")
    retrain.add_argument("--end", required=True, type=_iso_date, help="last day of data, YYYY-MM-DD")
    retrain.add_argument("--reason", help="why, kept in the run's trigger log")
    retrain.set_defaults(handler=_retrain)


def _at_least_one(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number of at least 1")
    return value


def _iso_date(text: str) -> Any:
    import datetime as dt

    try:
        return dt.date.fromisoformat(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a date (YYYY-MM-DD)") from None


def _build_registry(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    from zaindari.registry_cli import build_registry_command

    build_registry_command(commands)


def _edge_serve(args: argparse.Namespace) -> int:
    from zaindari.edge.server import EdgeApp, load_functions
    from zaindari.edge.wiring import check_edge_settings, edge_settings, start_edge_box, stop_edge_box
    from zaindari.infra.http_server import serve_asgi, serve_rsgi, serve_wsgi
    from zaindari.settings import SettingsError

    if args.interface is None:  # uvicorn's one process, or granian's workers
        args.interface = "asgi" if args.workers == 1 else "rsgi"
    if args.interface == "asgi" and args.workers != 1:
        print(
            "zaindari edge serve: --interface asgi runs one process; for --workers N use rsgi or wsgi",
            file=sys.stderr,
        )
        return 2
    try:
        settings = edge_settings()
        check_edge_settings(settings)
        functions = load_functions(args.functions)
    except (SettingsError, FileNotFoundError) as exc:
        print(f"zaindari edge serve: {exc}", file=sys.stderr)
        return 2
    app = EdgeApp(
        {name: module.handle for name, module in functions.items()},
        max_body_bytes=max(settings.edge_max_file_bytes, settings.max_payload_bytes),
        # ASGI and RSGI: score-event's handle_async is awaited on the event loop, the others'
        # handle runs on --threads threads (zaindari.edge.server)
        async_handlers={n: m.handle_async for n, m in functions.items() if hasattr(m, "handle_async")},
        threads=args.threads,
    )
    print(
        f"edge functions {', '.join(sorted(functions))} on http://{args.host}:{args.port}/function/<name>"
        f" ({args.interface.upper()})",
        flush=True,
    )
    # the box (buffer, shipper thread) lives in the worker; SIGTERM: requests answered, then the
    # box flushed and closed
    start, stop = start_edge_box, stop_edge_box
    if args.interface == "asgi":

        def stop_app_and_box() -> None:
            app.close()  # score-file's and model-sync's threads: their requests answered
            stop()

        serve_asgi(
            app.asgi, host=args.host, port=args.port, on_worker_start=start, on_worker_exit=stop_app_and_box
        )
        return 0
    if args.interface == "rsgi":
        serve_rsgi(
            app,
            host=args.host,
            port=args.port,
            workers=args.workers,
            on_worker_start=start,
            on_worker_exit=stop,
        )
        return 0
    serve_wsgi(
        app,
        host=args.host,
        port=args.port,
        workers=args.workers,
        threads=args.threads,
        name="zaindari-edge",
        on_worker_start=start,
        on_worker_exit=stop,
        server="granian",
    )
    return 0


def _build_edge(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    edge = commands.add_parser("edge", help="the edge box: the OpenFaaS functions without OpenFaaS")
    edge_commands = edge.add_subparsers(dest="edge_command", metavar="<command>", required=True)
    serve = edge_commands.add_parser(
        "serve",
        help="serve score-event, score-file and model-sync at /function/<name> (python3-http contract)",
        description="Settings come from ZAINDARI_* variables; the bearer token from the secret file "
        "ZAINDARI_EDGE_SECRETS_DIR/ZAINDARI_EDGE_TOKEN_SECRET.",
    )
    serve.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    serve.add_argument(
        "--port", type=int, default=8080, help="port (default 8080, like the OpenFaaS gateway)"
    )
    serve.add_argument(
        "--threads",
        type=int,
        default=4,
        help="threads of each worker process: wsgi: request threads; asgi and rsgi: threads running "
        "score-file and model-sync (score-event runs on the event loop) (default 4)",
    )
    serve.add_argument(
        "--interface",
        choices=("asgi", "rsgi", "wsgi"),
        default=None,
        help="asgi (uvicorn: one event loop reads, parses and answers every request; one process), "
        "rsgi (granian's native interface, one event loop per worker, HTTP on granian's threads) or "
        "wsgi (granian, a thread per request) (default: asgi, rsgi with --workers N; docs/EDGE.md)",
    )
    serve.add_argument(
        "--workers",
        type=_at_least_one,
        default=1,
        metavar="N",
        help="worker processes sharing the box's buffer (default 1; rsgi or wsgi only; see docs/EDGE.md)",
    )
    serve.add_argument(
        "--functions",
        type=Path,
        default=Path("functions"),
        help="folder of the functions' handler.py (default ./functions)",
    )
    serve.set_defaults(handler=_edge_serve)


def _serve(args: argparse.Namespace) -> int:
    from zaindari.bundle import BundleError, load_bundle
    from zaindari.infra.http_server import serve_wsgi
    from zaindari.serving import ServingApp

    try:
        app = ServingApp(load_bundle(args.model), threads=1)
    except (BundleError, OSError) as exc:
        print(f"zaindari serve: cannot load the model bundle {args.model}: {exc}", file=sys.stderr)
        return 2
    print(
        f"serving {app.bundle.model_version} on http://{args.host}:{args.port} (/ping, /invocations)",
        flush=True,
    )
    serve_wsgi(
        app, host=args.host, port=args.port, workers=args.workers, threads=args.threads, name="zaindari-serve"
    )
    return 0


def _build_serve(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    serve = commands.add_parser(
        "serve", help="the SageMaker serving contract (GET /ping, POST /invocations) for a model bundle"
    )
    serve.add_argument(
        "--model",
        type=Path,
        default=Path(os.environ.get("SM_MODEL_DIR", "/opt/ml/model")),
        help="the bundle folder (default /opt/ml/model, where SageMaker puts it)",
    )
    serve.add_argument("--host", default="0.0.0.0", help="address to listen on (default 0.0.0.0)")
    serve.add_argument("--port", type=int, default=8080, help="port (default 8080, SageMaker's)")
    serve.add_argument(
        "--workers",
        type=int,
        default=os.cpu_count() or 1,
        help="processes (default: one per CPU; the server is stateless)",
    )
    serve.add_argument("--threads", type=int, default=1, help="threads per process (default 1)")
    serve.set_defaults(handler=_serve)


# -- zaindari demo: the whole loop on embedded defaults (zaindari.demo)


def _demo(args: argparse.Namespace) -> int:
    from zaindari.demo.plant import demo_plan
    from zaindari.demo.run import run_demo

    summary = run_demo(demo_plan(small=args.small, seed=args.seed), args.out)
    return 1 if summary["failed_steps"] else 0


def _build_demo(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    demo = commands.add_parser(
        "demo",
        help="the whole loop on embedded defaults, with a report",
        description=(
            "Start the embedded AWS with template.yaml's resources, simulate a plant, train the first "
            "model on local Spark, register and promote it, score a historian drop (score_batch) and "
            "the live telemetry (score_event by SQS, IoT rule and HTTP), then read the outputs back and "
            "write summary.json, PNG plots and report.html. Steps not built yet are reported as not "
            "run, with why. Exit 0 when every built step ran, 1 when one failed."
        ),
    )
    demo.add_argument("--small", action="store_true", help="a 3-day plant of 4 machines (1 to 2 minutes)")
    demo.add_argument("--seed", type=int, default=0, help="the simulator's seed (default: %(default)s)")
    demo.add_argument(
        "--out",
        type=Path,
        default=Path("out/demo"),
        help="report folder, emptied first (default: %(default)s)",
    )
    demo.set_defaults(handler=_demo)


# Command groups, in the order ``--help`` lists them. Add a group by adding a builder here.
COMMANDS: dict[str, CommandBuilder] = {
    "aws": _build_aws,
    "invoke": _build_invoke,
    "retrain": _build_retrain,
    "registry": _build_registry,
    "edge": _build_edge,
    "serve": _build_serve,
    "demo": _build_demo,
}


def build_parser() -> argparse.ArgumentParser:
    """The full ``zaindari`` argument parser."""
    from zaindari import __version__

    parser = argparse.ArgumentParser(
        prog="zaindari",
        description="Stateless, event-driven functions for industrial predictive maintenance.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="<command>", required=True)
    for build in COMMANDS.values():
        build(commands)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the ``zaindari`` command with ``argv`` (default: ``sys.argv[1:]``); return the exit code."""
    args = build_parser().parse_args(argv)
    handler: Handler = args.handler
    return handler(args)


if __name__ == "__main__":
    sys.exit(main())
