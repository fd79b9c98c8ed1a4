"""`inferd serve | launch | list | terminate | registrations`."""

from __future__ import annotations

import contextlib
import importlib.util
import json
import shutil
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any, NoReturn

import click
from rich.console import Console
from rich.table import Table

from inferd import __version__
from inferd.cli.client import Client, ClientError, resolve_endpoint
from inferd.settings import Settings

console = Console(stderr=True)
# Piped output (grep, less) must not be folded at the 80 columns rich assumes without a terminal.
out = Console(width=None if sys.stdout.isatty() else 240)
endpoint_option = click.option(
    "-e", "--endpoint", default=None, help="Server address (default: the server last started here)."
)


def _client(endpoint: str | None, timeout: float | None = 30.0) -> Client:
    settings = Settings()
    return Client(resolve_endpoint(endpoint, settings), timeout=timeout, api_key=settings.api_key)


def _fail(message: str) -> NoReturn:
    console.print("[red]Error:[/red]", message, highlight=False, markup=True, soft_wrap=True)
    sys.exit(1)


def _request(endpoint: str | None, method: str, path: str, **kwargs: Any) -> Any:
    """One call to the server; a failure ends the command with the server's message."""
    try:
        return _client(endpoint).request(method, path, **kwargs)
    except ClientError as exc:
        _fail(str(exc))


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="inferd")
def cli() -> None:
    """Serve open models on this machine behind an OpenAI-compatible API."""


@cli.command()
@click.option("-H", "--host", default=None, help="Address to listen on (default 127.0.0.1).")
@click.option("-p", "--port", type=int, default=None, help="Port (default 9997).")
@click.option(
    "--launch",
    "launch",
    multiple=True,
    metavar="NAME",
    help="Launch this catalogue model once the server is up (repeatable).",
)
@click.option(
    "--no-restore",
    is_flag=True,
    help="Do not relaunch the models that were running when the last server stopped.",
)
@click.option(
    "--auth",
    is_flag=True,
    default=None,
    help="Require an API key on every request (INFERD_AUTH=1); see `inferd keys`.",
)
@click.option(
    "--ray-address",
    default=None,
    help="Run model processes on this Ray cluster (INFERD_RAY_ADDRESS): `auto`, or the head's "
    "host:port as `ray start --head` printed it. Needs `pip install 'inferd[ray]'` on every node.",
)
@click.option(
    "--api-processes",
    type=click.IntRange(1, 64),
    default=None,
    help="Processes taking requests on the port (INFERD_API_PROCESSES, default 1: the server "
    "itself). Above 1, that many front processes take them, relaying embeddings and rerank "
    "themselves and passing the rest on to the server: more requests a second than one "
    "process parses.",
)
@click.option("--log-level", default="info", show_default=True)
def serve(
    host: str | None,
    port: int | None,
    launch: tuple[str, ...],
    no_restore: bool,
    auth: bool | None,
    ray_address: str | None,
    api_processes: int | None,
    log_level: str,
) -> None:
    """Start the server; models launched before come back unless --no-restore."""
    import logging

    import uvicorn

    from inferd.api.app import create_app
    from inferd.api.uvicorn_options import uvicorn_options
    from inferd.catalog import get_catalog
    from inferd.errors import NotFound

    overrides: dict[str, Any] = {}
    if host:
        overrides["host"] = host
    if port:
        overrides["port"] = port
    if auth:
        overrides["auth"] = True
    if ray_address:
        overrides["ray_address"] = ray_address
    if api_processes:
        overrides["api_processes"] = api_processes
    settings = Settings(**overrides)
    if settings.ray_address and importlib.util.find_spec("ray") is None:
        _fail("--ray-address needs Ray: pip install 'inferd[ray]' (on every node)")
    if settings.auth:
        _first_admin_key(settings)
    elif settings.host not in ("127.0.0.1", "localhost", "::1"):
        console.print(
            f"[yellow]Warning:[/yellow] serving on {settings.host} without --auth: anyone who "
            "can reach this port can launch, stop and use models.",
            highlight=False,
        )
    for name in launch:
        try:
            get_catalog().get(name)
        except NotFound as exc:
            _fail(exc.message)
    logging.basicConfig(
        level=log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    for chatty in ("httpx", "httpx2"):  # one line per proxied request or hub call
        logging.getLogger(chatty).setLevel(logging.WARNING)
    base = f"http://{settings.host}:{settings.port}"
    console.print(f"inferd {__version__}: OpenAI base URL [bold]{base}/v1[/bold]", highlight=False)
    if settings.api_processes == 1:
        uvicorn.run(
            create_app(settings, launch, restore=not no_restore),
            host=settings.host,
            port=settings.port,
            **uvicorn_options(settings, log_level),
        )
        return
    _serve_with_fronts(settings, launch, not no_restore, log_level)


def _serve_with_fronts(
    settings: Settings, launch: tuple[str, ...], restore: bool, log_level: str
) -> None:
    """Front processes take the port's connections (`api/fronts`); the server listens on a
    Unix socket of its own, for the slots they ask for and the requests they pass on."""
    import logging
    import socket
    import tempfile

    import uvicorn

    from inferd.api.app import create_app
    from inferd.api.fronts.forward import NotPassedOn
    from inferd.api.fronts.processes import FrontsPlan
    from inferd.api.uvicorn_options import uvicorn_options

    try:
        public = socket.create_server(
            (settings.host, settings.port),
            family=socket.AF_INET6 if ":" in settings.host else socket.AF_INET,
            backlog=2048,
        )
    except OSError as exc:
        _fail(f"cannot listen on {settings.host}:{settings.port}: {exc.strerror or exc}")
    folder = Path(tempfile.mkdtemp(prefix="inferd-api-"))  # Unix socket paths are short
    plan = FrontsPlan(
        count=settings.api_processes,
        listening_fd=public.fileno(),
        folder=folder,
        log_level=log_level,
    )
    private = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    private.bind(str(plan.server))
    private.listen(2048)
    config = uvicorn.Config(
        create_app(settings, launch, restore=restore, fronts=plan),
        **uvicorn_options(settings, log_level),
    )
    logging.getLogger("uvicorn.access").addFilter(NotPassedOn())
    try:
        uvicorn.Server(config).run(sockets=[private])
    finally:  # reached when the server did not start (a signal ends the process instead)
        public.close()
        shutil.rmtree(folder, ignore_errors=True)


def _first_admin_key(settings: Settings) -> None:
    """With auth on and no admin key yet, nobody could ever manage the server: make one."""
    with _key_store(settings) as store:
        if not any(key["admin"] for key in store.api_keys()):
            secret = store.create_key("admin", admin=True, models=None, expires=None)
            console.print(
                f"Auth is on. Admin API key (shown once; `inferd keys` manages keys): {secret}",
                highlight=False,
                soft_wrap=True,
            )


@cli.group()
def keys() -> None:
    """API keys, managed on the server's machine (its INFERD_HOME is the root of trust)."""


@contextlib.contextmanager
def _key_store(settings: Settings | None = None) -> Iterator[Any]:
    from inferd.storage.state import StateStore

    store = StateStore((settings or Settings()).state_db)
    try:
        yield store
    finally:
        store.close()


@keys.command("create")
@click.option("-n", "--name", required=True, help="A name to list and revoke it by.")
@click.option("--models", default=None, help="Comma-separated model uids it may use (default all).")
@click.option("--admin", is_flag=True, help="May launch, stop, register and manage keys.")
@click.option("--expires", type=float, default=None, metavar="DAYS", help="Valid for DAYS days.")
def keys_create(name: str, models: str | None, admin: bool, expires: float | None) -> None:
    """Make a key; it is printed once and only its hash is kept."""
    allowed = [m.strip() for m in models.split(",") if m.strip()] if models else None
    with _key_store() as store:
        try:
            secret = store.create_key(
                name, admin, allowed, time.time() + expires * 86400 if expires else None
            )
        except ValueError as exc:
            _fail(str(exc))
    click.echo(secret)


@keys.command("list")
@click.option("--json", "as_json", is_flag=True, help="Print JSON for scripts.")
def keys_list(as_json: bool) -> None:
    """Keys by name, with what they may do (never the keys themselves)."""
    with _key_store() as store:
        rows = store.api_keys()
    if as_json:
        click.echo(json.dumps(rows, indent=2))
        return
    table = Table("Name", "Admin", "Models", "Created", "Expires")
    for row in rows:
        table.add_row(
            row["name"],
            "yes" if row["admin"] else "no",
            ", ".join(row["models"]) if row["models"] else "all",
            time.strftime("%Y-%m-%d %H:%M", time.localtime(row["created"])),
            _day(row["expires"]),
        )
    out.print(table)


def _day(moment: float | None) -> str:
    return time.strftime("%Y-%m-%d", time.localtime(moment)) if moment else "never"


@keys.command("revoke")
@click.argument("name")
def keys_revoke(name: str) -> None:
    """Revoke a key at once, on a running server too."""
    with _key_store() as store:
        revoked = store.revoke_key(name)
    if not revoked:
        _fail(f"no key named {name!r}")
    console.print(f"revoked {name}")


def _engine_options(args: list[str]) -> dict[str, Any]:
    """Xinference passes engine options as extra `--name value` pairs; so do we."""
    options: dict[str, Any] = {}
    it = iter(args)
    for arg in it:
        if not arg.startswith("--"):
            raise click.UsageError(f"unexpected argument {arg!r}")
        key, _, value = arg[2:].partition("=")
        if not _:
            value = next(it, None)  # type: ignore[assignment]
            if value is None:
                raise click.UsageError(f"option {arg} needs a value")
        options[key.replace("-", "_")] = _parse_value(value)
    return options


def _parse_value(text: str) -> Any:
    try:
        return json.loads(text)
    except ValueError:
        return text


@cli.command(context_settings={"ignore_unknown_options": True, "allow_extra_args": True})
@click.option("-n", "--model-name", required=True, help="Catalogue name of the model.")
@click.option("-t", "--model-type", default="LLM", show_default=True)
@click.option("-u", "--model-uid", default=None, help="Name to serve it under (default: its name).")
@click.option("-en", "--model-engine", "--engine", "model_engine", default=None)
@click.option("-f", "--model-format", default=None)
@click.option("-s", "--size-in-billions", "size", default=None)
@click.option("-q", "--quantization", default=None)
@click.option("--model-path", default=None, help="Serve weights from this local path.")
@click.option(
    "--download-hub",
    type=click.Choice(["huggingface", "modelscope"]),
    default=None,
    help="Hub to fetch from (default: INFERD_MODEL_SRC, else huggingface).",
)
@click.option("--n-gpu", default=None, help="'auto', or 0 for the CPU.")
@click.option("-r", "--replica", type=int, default=None, help="Number of model processes.")
@click.option(
    "--idle-timeout", type=float, default=None, help="Unload after SECONDS without requests."
)
@endpoint_option
@click.pass_context
def launch(ctx: click.Context, endpoint: str | None, n_gpu: str | None, **fields: Any) -> None:
    """Launch a model and wait until it is ready; prints its uid.

    Extra `--option value` pairs go to the engine (e.g. --n_ctx 4096 --n_parallel 8).
    """
    body = {key: value for key, value in fields.items() if value is not None}
    if "size" in body:
        body["model_size_in_billions"] = body.pop("size")
    if n_gpu is not None:
        body["n_gpu"] = _parse_value(n_gpu)
    body.update(_engine_options(ctx.args))
    client = _client(endpoint, timeout=None)
    uid = body.get("model_uid") or body["model_name"]
    try:
        result = _launch_with_progress(client, body, uid)
    except ClientError as exc:
        _fail(str(exc))
    click.echo(result["model_uid"])


def _launch_with_progress(client: Client, body: dict[str, Any], uid: str) -> dict[str, Any]:
    """POST the launch and, while it runs, draw the model's progress from its progress API."""
    import threading

    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

    outcome: dict[str, Any] = {}
    notes: list[str] = []

    def send() -> None:
        try:
            outcome["result"] = client.request("POST", "/v1/models", json=body)
        except ClientError as exc:
            outcome["error"] = exc

    worker = threading.Thread(target=send, daemon=True)
    worker.start()
    poller = Client(client.endpoint, timeout=5)
    columns = (
        TextColumn("{task.description}"),
        BarColumn(bar_width=24),
        TextColumn("{task.percentage:>3.0f}%"),
        TextColumn("{task.fields[stage]}"),
        TimeElapsedColumn(),
    )
    with Progress(*columns, console=console, transient=True) as bar:
        task = bar.add_task(f"Launching {uid}", total=1.0, stage="starting")
        while worker.is_alive():
            worker.join(0.25)
            try:
                progress = poller.request("GET", f"/v1/models/{uid}/progress")
            except ClientError:
                continue  # not registered yet, or gone
            stage = progress["stage"]
            if (download := progress.get("download")) and download["total_bytes"]:
                speed = download["speed_bytes_per_s"] / 1e6
                eta = download["eta_s"]
                stage = (
                    f"downloading from {download['hub']} {download['bytes'] / 1e6:.0f}/"
                    f"{download['total_bytes'] / 1e6:.0f} MB {speed:.0f} MB/s"
                    + (f" {eta:.0f}s left" if eta is not None else "")
                )
                for note in download["notes"]:
                    if note not in notes:  # why the hub asked for was not used
                        notes.append(note)
                        bar.console.print(f"[yellow]skipped {note}[/yellow]")
            if install := progress.get("install"):
                line = (install["message"] or "")[:60]
                stage = f"installing {install['environment']}: {line}"
            bar.update(task, completed=progress["progress"], stage=stage)
    if "error" in outcome:
        raise outcome["error"]
    result: dict[str, Any] = outcome["result"]
    return result


@cli.command("list")
@click.option("--json", "as_json", is_flag=True, help="Print JSON for scripts.")
@endpoint_option
def list_models(endpoint: str | None, as_json: bool) -> None:
    """List launched models."""
    models = _request(endpoint, "GET", "/v1/models")["data"]
    if as_json:
        click.echo(json.dumps(models, indent=2))
        return
    columns = ["UID", "Type", "Name", "Engine", "Format", "Size (B)", "Quantization", "Replicas"]
    # On a cluster, where each replica runs: its node's address and the start of its Ray id.
    clustered = any(r.get("node_id") for m in models for r in m["replicas"])
    table = Table(*columns, *(["Nodes"] if clustered else []), "Status")
    for m in models:
        ready = sum(1 for r in m["replicas"] if r["status"] == "ready")
        row = [
            m["id"],
            m["model_type"],
            m["model_name"],
            m["model_engine"],
            m["model_format"],
            m["model_size_in_billions"].replace("_", "."),
            m["quantization"],
            f"{ready}/{m['replica']}",
        ]
        if clustered:
            row.append(", ".join(_node_of(r) for r in m["replicas"]))
        table.add_row(*row, m["status"])
    out.print(table)


@cli.command()
@click.option("--json", "as_json", is_flag=True, help="Print JSON for scripts.")
@endpoint_option
def nodes(endpoint: str | None, as_json: bool) -> None:
    """List the machines model processes run on (the Ray cluster's nodes, or this one)."""
    answer = _request(endpoint, "GET", "/v1/cluster/nodes")
    if as_json:
        click.echo(json.dumps(answer, indent=2))
        return
    table = Table("Node", "Address", "Alive", "CPUs free", "GPUs free", "Memory (GiB)", "Replicas")
    for n in answer["nodes"]:
        if answer["mode"] == "single":
            cpus, gpus = f"{n['cpu_count']}", f"{n['gpu_count']}"
            memory = _gib(n.get("memory_available"), n.get("memory_total"))
        else:
            cpus = f"{n['cpu_available']:g}/{n['cpu_total']:g}"
            gpus = f"{n['gpu_available']:g}/{n['gpu_total']:g}"
            memory = _gib(n["memory_available"], n["memory_total"])
        replicas = ", ".join(f"{r['model_uid']}/{r['replica']}" for r in n["replicas"])
        table.add_row(
            n["id"][:8], n["address"], "yes" if n["alive"] else "no", cpus, gpus, memory, replicas
        )
    out.print(table)


def _gib(free: int | None, total: int | None) -> str:
    if not total:
        return "-"
    return f"{(free or 0) / 2**30:.1f}/{total / 2**30:.1f}"


def _node_of(replica: dict[str, Any]) -> str:
    if not replica.get("node_id"):
        return str(replica.get("node") or "local")
    return f"{replica['node']} ({replica['node_id'][:8]})"


@cli.command()
@click.argument("model_uid", required=False)
@click.option("-u", "--model-uid", "uid_option", default=None)
@endpoint_option
def terminate(model_uid: str | None, uid_option: str | None, endpoint: str | None) -> None:
    """Stop a launched model and free its memory."""
    uid = model_uid or uid_option
    if not uid:
        raise click.UsageError("give the model's uid: inferd terminate UID")
    _request(endpoint, "DELETE", f"/v1/models/{uid}")
    console.print(f"terminated {uid}")


@cli.command()
@click.argument("model_uid")
@click.option("-n", "--lines", type=int, default=200, show_default=True)
@click.option("-f", "--follow", is_flag=True, help="Keep printing new lines.")
@click.option("--replica", type=int, default=0, show_default=True)
@endpoint_option
def logs(model_uid: str, lines: int, follow: bool, replica: int, endpoint: str | None) -> None:
    """Print a model process's log."""
    params = {"tail": lines, "replica": replica, "follow": follow}
    client = _client(endpoint, timeout=None)
    try:
        if not follow:
            click.echo(client.text(f"/v1/models/{model_uid}/logs", params=params), nl=False)
            return
        for chunk in client.stream_text(f"/v1/models/{model_uid}/logs", params=params):
            click.echo(chunk, nl=False)
    except ClientError as exc:
        _fail(str(exc))
    except KeyboardInterrupt:
        pass


@cli.command()
@click.option("-t", "--model-type", default="LLM", show_default=True)
@click.option("--file", "file_", type=click.Path(exists=True, dir_okay=False), required=True)
@click.option("--persist", is_flag=True, help="Keep it across server restarts.")
@endpoint_option
def register(model_type: str, file_: str, persist: bool, endpoint: str | None) -> None:
    """Register a custom model from a JSON definition (Xinference's format)."""
    with open(file_, encoding="utf-8") as f:
        model = f.read()
    result = _request(
        endpoint,
        "POST",
        f"/v1/model_registrations/{model_type}",
        json={"model": model, "persist": persist},
    )
    if result.get("ignored_fields"):
        console.print(f"ignored fields: {', '.join(result['ignored_fields'])}", highlight=False)
    kept = "persisted" if persist else "until the server stops"
    console.print(f"registered {result.get('model_name', '')} ({kept})", highlight=False)


@cli.command()
@click.option("-t", "--model-type", default="LLM", show_default=True)
@click.option("-n", "--model-name", required=True)
@endpoint_option
def unregister(model_type: str, model_name: str, endpoint: str | None) -> None:
    """Remove a custom model registration."""
    _request(endpoint, "DELETE", f"/v1/model_registrations/{model_type}/{model_name}")
    console.print(f"unregistered {model_name}")


@cli.group(invoke_without_command=True)
@click.option("-n", "--model-name", default=None, help="Which engines can serve this model.")
@click.option("-t", "--model-type", default=None)
@click.option("--json", "as_json", is_flag=True, help="Print JSON for scripts.")
@endpoint_option
@click.pass_context
def engine(
    ctx: click.Context,
    model_name: str | None,
    model_type: str | None,
    as_json: bool,
    endpoint: str | None,
) -> None:
    """Engines: which can serve a model (-n NAME), and their environments (install, list,
    remove)."""
    if ctx.invoked_subcommand is not None:
        return
    if model_name is None:
        raise click.UsageError("give -n MODEL_NAME, or a command: install, list, remove")
    path = f"/v1/engines/{model_type}/{model_name}" if model_type else f"/v1/engines/{model_name}"
    table_data = _request(endpoint, "GET", path)
    if as_json:
        click.echo(json.dumps(table_data, indent=2))
        return
    table = Table("Engine", "Format", "Size (B)", "Quantizations", "On this machine")
    for name, rows in table_data.items():
        for row in rows:
            if not row["usable"]:
                where = f"no - {row['reason']}"
            elif row.get("engine_env", "current") != "current":
                where = f"yes, in its own environment ({row['engine_env']})"
            else:
                where = "yes"
            table.add_row(
                name,
                row["model_format"],
                row["model_size_in_billions"].replace("_", "."),
                ", ".join(row["quantizations"]),
                where,
            )
    out.print(table)


@engine.command("install")
@click.argument("name")
@click.option("--version", "version", default=None, help="Default: the newest tested one.")
@click.option("--package", "packages", multiple=True, help="One more package beside it.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON for scripts.")
@endpoint_option
def engine_install(
    name: str, version: str | None, packages: tuple[str, ...], as_json: bool, endpoint: str | None
) -> None:
    """Build an engine's environment now, ahead of the first launch that needs it."""
    body: dict[str, Any] = {"engine": name, "version": version, "packages": list(packages) or None}
    with console.status(f"installing {name}{f' {version}' if version else ''} ..."):
        built = _request(endpoint, "POST", "/v1/engine_environments", json=body, timeout=None)
    if as_json:
        click.echo(json.dumps(built, indent=2))
        return
    console.print(
        f"{built['name']} is ready ({built['size_bytes'] / 1e6:,.0f} MB at {built['path']})",
        highlight=False,
    )


@engine.command("list")
@click.option("--json", "as_json", is_flag=True, help="Print JSON for scripts.")
@endpoint_option
def engine_list(as_json: bool, endpoint: str | None) -> None:
    """The engine environments built here (or, on a Ray cluster, on its nodes), their size,
    and the models running in each."""
    listing = _request(endpoint, "GET", "/v1/engine_environments")
    if as_json:
        click.echo(json.dumps(listing, indent=2))
        return
    table = Table("Environment", "Engine", "Version", "Where", "Size", "Models", "Built")
    for env in listing["data"]:
        size, created = env["size_bytes"], env["created"]
        table.add_row(
            env["name"],
            env["engine"],
            env["version"] + ("" if env["locked"] else " (unlocked)"),
            env.get("where", "here"),
            "-" if size is None else f"{size / 1e6:,.0f} MB",
            ", ".join(env["models"]) or "-",
            "-" if created is None else time.strftime("%Y-%m-%d %H:%M", time.localtime(created)),
        )
    out.print(table)
    engines = ", ".join(
        f"{name} ({', '.join(e['locked_versions']) or 'any version you name'})"
        for name, e in listing["engines"].items()
    )
    console.print(
        f"engines that run in their own environment ({listing['platform']}): {engines}",
        highlight=False,
    )


@engine.command("remove")
@click.argument("name")
@endpoint_option
def engine_remove(name: str, endpoint: str | None) -> None:
    """Remove an engine environment no running model uses."""
    removed = _request(endpoint, "DELETE", f"/v1/engine_environments/{name}")
    console.print(f"removed {name} ({removed['size_bytes'] / 1e6:,.0f} MB)", highlight=False)


@cli.command()
@click.option("-n", "--model-name", default=None)
@click.option("--json", "as_json", is_flag=True, help="Print JSON for scripts.")
@endpoint_option
def cached(model_name: str | None, as_json: bool, endpoint: str | None) -> None:
    """Models in this server's cache, with their size on disk."""
    params = {"model_name": model_name} if model_name else {}
    entries = _request(endpoint, "GET", "/v1/cache/models", params=params)["list"]
    if as_json:
        click.echo(json.dumps(entries, indent=2))
        return
    table = Table("Name", "Format", "Size (B)", "Quantization", "On disk", "Source", "Last used")
    for e in entries:
        table.add_row(
            e["model_name"],
            e["model_format"],
            e["model_size_in_billions"].replace("_", "."),
            e["quantization"],
            f"{e['size_bytes'] / 1e6:.1f} MB",
            e["source"],
            time.strftime("%Y-%m-%d %H:%M", time.localtime(e["last_used"])),
        )
    out.print(table)


@cli.command("remove-cache")
@click.argument("model_name")
@click.option("-y", "--yes", is_flag=True, help="Do not ask for confirmation.")
@endpoint_option
def remove_cache(model_name: str, yes: bool, endpoint: str | None) -> None:
    """Delete a model's cached files (refused while it is launched)."""
    if not yes:
        click.confirm(f"Delete every cached file of {model_name}?", abort=True, err=True)
    result = _request(endpoint, "DELETE", "/v1/cache/models", params={"model_name": model_name})
    console.print(f"removed {model_name}: {result['freed_bytes'] / 1e6:.1f} MB freed")


@cli.command()
@click.option("-t", "--model-type", default="LLM", show_default=True)
@click.option("--json", "as_json", is_flag=True, help="Print JSON for scripts.")
@endpoint_option
def registrations(model_type: str, as_json: bool, endpoint: str | None) -> None:
    """List the models the server can launch."""
    families = _request(
        endpoint, "GET", f"/v1/model_registrations/{model_type}", params={"detailed": "true"}
    )
    if as_json:
        click.echo(json.dumps(families, indent=2, ensure_ascii=False))
        return
    table = Table("Type", "Name", "Language", "Ability", "Formats", "Built-in")
    for f in families:
        formats = sorted({s["model_format"] for s in f["model_specs"]})
        table.add_row(
            f["model_type"],
            f["model_name"],
            ", ".join(f["model_lang"]),
            ", ".join(f["model_ability"]),
            ", ".join(formats),
            "yes" if f["is_builtin"] else "no",
        )
    out.print(table)


def main() -> None:
    cli()
