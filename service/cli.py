"""Operate the service from a shell: `python -m service list|status|watch|clear|cancel|history`.

The CLI (a click group) reads the same settings as the server, through service/config.py, and
talks to the same storage, so it works on a host with no server running, or beside one. Output
is for people by default and JSON with `--json`. `status`, `watch`, `clear` and `cancel` act on
one workflow of one owner: the WORKFLOW_ID given, else the owner's current one (`--owner`,
default `public`). Exit codes: 0 done (also when there was nothing to do), 1 storage down or no
such workflow (a WORKFLOW_ID the owner does not have), 2 usage error (bad arguments, a bad
setting, a `--workflow-id` guard that is not the stored one).
"""

from __future__ import annotations

import functools
import heapq
import itertools
import json
import logging
import os
import queue
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any, TextIO

import click

from . import config, logs, model, runs
from .storage import (
    HISTORY_MAX,
    RESYNC,
    CurrentWorkflow,
    Event,
    FileStore,
    Snapshot,
    StateStore,
    StorageUnavailable,
)
from .storage.base import HISTORY_DAYS, MIGRATION_OWNER, check_workflow_id, dumps, utc_now
from .storage.listing import LIMIT_MAX, STATUSES, score
from .store import build_store

EXIT_OK = 0
EXIT_STORAGE_DOWN = 1
# Like grep's "nothing found": the workflow named is not there (stderr says which).
EXIT_NO_WORKFLOW = 1
EXIT_USAGE = 2
PROG = "python -m service"
# `list --owner '*'`: every owner's workflows.
ALL_OWNERS = "*"
# Workflows `list` reads per storage call, following the cursors: the most one page may hold.
LIST_PAGE = LIMIT_MAX
# How often `watch` wakes up with nothing to read: to notice expiry, a deadline or Ctrl-C.
WATCH_TICK_SECONDS = 0.25
# How long `watch` waits between tries to re-read the state while storage is down.
WATCH_RETRY_SECONDS = 0.5
# How long a starting worker waits between tries to reach the queue's Redis.
WORKER_RETRY_SECONDS = 1.0
# Put in the watch's inbox by a signal handler, so the main loop wakes up at once.
WAKE = object()


class Refused(Exception):
    """The command cannot run as asked (exit code 2, with one line saying why)."""


class NoSuchWorkflow(Exception):
    """A WORKFLOW_ID the owner does not have (exit code 1, with one line saying so)."""

    def __init__(self, owner: str, workflow_id: str) -> None:
        super().__init__(
            f"no workflow {workflow_id!r} for owner {owner}: never created, cleared or expired"
        )


class Output:
    """Where a command writes: stdout for results, stderr for notes, both line by line."""

    def __init__(self, stdout: TextIO, stderr: TextIO, as_json: bool) -> None:
        self.stdout = stdout
        self.stderr = stderr
        self.as_json = as_json

    def line(self, text: str) -> None:
        """Write one line of results and flush it (a pipe must see each line at once)."""
        self.stdout.write(text + "\n")
        self.stdout.flush()

    def data(self, value: Any) -> None:
        """Write a value as one line of JSON."""
        self.line(dumps(value))

    def note(self, text: str) -> None:
        """Write one line for the person at the terminal, on stderr."""
        self.stderr.write(f"workflow-state: {one_line(text)}\n")
        self.stderr.flush()


def one_line(text: str) -> str:
    """Return `text` with line breaks folded, so a message is always exactly one line."""
    return " ".join(text.split())


# --- describing states ---------------------------------------------------------------------


def current_step(state: dict[str, Any]) -> dict[str, Any] | None:
    """Return {index, action, label, status} of the state's current step, or None."""
    steps = state.get("steps") or []
    index = state.get("current_step", 0)
    if not 0 <= index < len(steps):
        return None
    step = steps[index]
    return {
        "index": index,
        "action": step.get("action"),
        "label": step.get("label"),
        "status": step.get("status"),
    }


def describe_step(state: dict[str, Any]) -> str:
    """Return e.g. `step 3/6 setup_civitdl in_progress`, or `no steps`."""
    step = current_step(state)
    if step is None:
        return "no steps"
    return f"step {step['index'] + 1}/{len(state['steps'])} {step['action']} {step['status']}"


def change_line(kind: str, event_id: str, state: dict[str, Any] | None) -> str:
    """Return the one-line human description `watch` prints for a change."""
    if state is None:
        stamp = model.format_time(utc_now())
        what = {"expired": "expired", "cleared": "cleared"}.get(kind, "no workflow")
        return f"{stamp} #{event_id} {what}"
    progress = model.progress_percent(state)
    return (
        f"{state['last_update']} #{event_id} {state['workflow_id']} {state['status']} "
        f"{describe_step(state)} {progress}%"
    )


def change_record(kind: str, event_id: str, state: dict[str, Any] | None) -> dict[str, Any]:
    """Return the JSON object `watch --json` prints for a change: the summary, id, kind, step."""
    return {
        "id": event_id,
        "kind": kind,
        **model.summarize(state),
        "step": current_step(state) if state is not None else None,
    }


# --- running a command ---------------------------------------------------------------------


def _interrupt() -> None:
    raise KeyboardInterrupt


@contextmanager
def on_signals(handler: Callable[[], None]) -> Iterator[None]:
    """Call `handler` on SIGINT and SIGTERM (`timeout`, a supervisor) within the block."""
    if threading.current_thread() is not threading.main_thread():
        yield  # only the main thread may set signal handlers (an embedding program's choice)
        return
    previous = {
        signum: signal.signal(signum, lambda signum, frame: handler())
        for signum in (signal.SIGINT, signal.SIGTERM)
    }
    try:
        yield
    finally:
        for signum, handler_before in previous.items():
            if handler_before is not None:
                signal.signal(signum, handler_before)


class Invocation:
    """One run of the CLI: the group's options, then the command's."""

    def __init__(self, as_json: bool, url: str | None) -> None:
        self.as_json = as_json
        self.url = url
        self.settings: dict[str, Any] = {}

    def config(self) -> dict[str, Any]:
        """Return the settings: the environment's, with --url as WORKFLOW_STATE_URL."""
        return config.from_env(overrides={"WORKFLOW_STATE_URL": self.url} if self.url else None)

    def run(self, command: Callable[..., int], as_json: bool, **options: Any) -> None:
        """Run `command` on the configured store, then exit with its code (see module doc)."""
        out = Output(sys.stdout, sys.stderr, self.as_json or as_json)
        with logs.configured("text", level=logging.WARNING):
            code = self._run(command, out, options)
        click.get_current_context().exit(code)

    def _run(self, command: Callable[..., int], out: Output, options: dict[str, Any]) -> int:
        try:
            self.settings = self.config()
            # Owner `public`'s current workflow: the one the seed's single state became.
            store = CurrentWorkflow(build_store(self.settings), MIGRATION_OWNER)
        except ValueError as error:  # ConfigError, UnknownBackend, a bad path or key
            out.note(str(error))
            return EXIT_USAGE
        try:
            with on_signals(_interrupt):
                return command(store, out, **options)
        except StorageUnavailable as error:
            out.note(f"storage unavailable: {error.message}")
            return EXIT_STORAGE_DOWN
        except Refused as error:
            out.note(str(error))
            return EXIT_USAGE
        except NoSuchWorkflow as error:
            out.note(str(error))
            return EXIT_NO_WORKFLOW
        except KeyboardInterrupt:
            return EXIT_OK
        except BrokenPipeError:
            # The reader went away (e.g. `| head -1`): stop quietly, and keep Python's exit
            # flush from complaining about the closed pipe.
            _silence_stdout()
            return EXIT_OK
        finally:
            store.close()


def _silence_stdout() -> None:
    try:
        fileno = sys.stdout.fileno()
    except (AttributeError, OSError, ValueError):
        return  # not a real file (an in-process test runner): nothing will flush to a pipe
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, fileno)
    os.close(devnull)


# --- the command line ----------------------------------------------------------------------

json_flag = click.option("--json", "as_json", is_flag=True, help="Print JSON for scripts.")


def _a_number(ctx: click.Context, param: click.Parameter, value: float) -> float:
    if value != value:  # NaN passes every range check
        raise click.BadParameter("must be a number")
    return value


@click.group(
    epilog="Exit codes: 0 done, 1 storage unavailable or no such workflow, 2 usage or "
    "configuration error.",
    context_settings={"help_option_names": ["-h", "--help"]},
)
@json_flag
@click.option(
    "--url",
    envvar="WORKFLOW_STATE_URL",
    show_envvar=True,
    metavar="URL",
    help="Storage URL, read as the server reads it (default: REDIS_URL, else the state file "
    "under ./var). The other settings (WORKFLOW_STATE_KEY, ...) come from the environment.",
)
@click.pass_context
def cli(ctx: click.Context, as_json: bool, url: str | None) -> None:
    """Inspect and operate the workflow state, on the storage the server uses."""
    ctx.obj = Invocation(as_json, url)


def command(function: Callable[..., int] | None = None, *, name: str | None = None) -> Any:
    """Make `function(store, out, **options)` a command of `cli` that takes --json too.

    As `@command`, named after the function, or `@command(name=...)`.
    """
    if function is None:
        return functools.partial(command, name=name)

    @json_flag
    @click.pass_obj
    @functools.wraps(function)  # the name, the help text and the options declared on it
    def run(invocation: Invocation, as_json: bool, **options: Any) -> None:
        invocation.run(function, as_json, **options)

    return cli.command(name)(run)


def _a_workflow_id(ctx: click.Context, param: click.Parameter, value: str | None) -> str | None:
    try:
        return check_workflow_id(value)
    except model.InvalidWorkflowId as error:
        raise click.BadParameter(error.message) from None


workflow_argument = click.argument(
    "workflow", metavar="[WORKFLOW_ID]", required=False, callback=_a_workflow_id
)

owner_option = click.option(
    "--owner",
    default=MIGRATION_OWNER,
    show_default=True,
    metavar="USER",
    help="Whose workflow (the HTTP API's owner).",
)


def _owned(store: CurrentWorkflow, owner: str) -> CurrentWorkflow:
    """Return `owner`'s view of the store, refusing a name that cannot be an owner."""
    if not config.is_user_name(owner):
        raise Refused(f"--owner {owner!r} is not a valid user name ({config.USER_NAME_RULE})")
    return CurrentWorkflow(store.store, owner)


def _found(store: CurrentWorkflow, workflow: str | None) -> dict[str, Any] | None:
    """Return workflow `workflow` of the store's owner, or its current one (None: there is none).

    A named workflow that is not there raises NoSuchWorkflow.
    """
    if workflow is None:
        return store.get().state
    state = store.store.get(store.owner, workflow).state
    if state is None:
        raise NoSuchWorkflow(store.owner, workflow)
    return state


# --- commands ------------------------------------------------------------------------------


@command
@workflow_argument
@owner_option
def status(store: CurrentWorkflow, out: Output, workflow: str | None, owner: str) -> int:
    """Print a workflow's summary, by default the current one's (--json: as the API does)."""
    store = _owned(store, owner)
    state = _found(store, workflow)
    summary = model.summarize(state)
    if out.as_json:
        out.data(summary)
        return EXIT_OK
    if state is None:
        out.line("No workflow state.")
    else:
        step = current_step(state)
        step_text = (
            f"{step['index'] + 1} of {summary['total_steps']}: {step['action']} ({step['status']})"
            if step is not None
            else "no steps"
        )
        activity = "active" if summary["active"] else "finished"
        for label, value in (
            ("Workflow", summary["workflow_id"]),
            ("Owner", owner),
            ("Status", f"{summary['status']} ({activity})"),
            ("Step", step_text),
            ("Progress", f"{summary['progress_percent']}%"),
            ("Started", summary["start_time"]),
            ("Updated", summary["last_update"]),
            ("Version", state["version"]),
        ):
            out.line(f"{label:<10}{value}")
    out.line(f"{'Storage':<10}{store.describe()}")
    return EXIT_OK


def check_file_owner(store: CurrentWorkflow) -> None:
    """Refuse to write state files that the server, running as another user, could not read.

    A file written by this process replaces the server's (atomic rename), so it would be owned
    by whoever runs the CLI, with mode 0600: run as root beside a systemd DynamicUser service,
    that locks the service out of its own state.
    """
    backend = store.store
    if not isinstance(backend, FileStore):
        return
    try:
        owner = os.stat(backend.directory).st_uid
    except OSError:
        return  # no directory yet: nothing to lock anyone out of
    if owner != os.geteuid():
        raise Refused(
            f"{backend.directory} belongs to uid {owner}; files written as uid {os.geteuid()} "
            f"would lock the server out. Run as that user (sudo -u '#{owner}' ...) or use the "
            "HTTP API"
        )


@command
@workflow_argument
@owner_option
def clear(store: CurrentWorkflow, out: Output, workflow: str | None, owner: str) -> int:
    """Delete a workflow; by default the current one, as DELETE /workflow/state does."""
    check_file_owner(store)
    store = _owned(store, owner)
    before = _found(store, workflow)
    try:
        # No id: the current one, also when there is none (the delete still takes a number).
        version = store.store.delete(owner, workflow)
    except model.NoWorkflow:  # it went away between our read and our delete
        assert workflow is not None
        raise NoSuchWorkflow(owner, workflow) from None
    if out.as_json:
        out.data(
            {
                "success": True,
                "message": "Workflow state cleared",
                "workflow_id": before["workflow_id"] if before else None,
                "version": version,
            }
        )
    elif before is None:
        out.line(f"Nothing to clear; recorded the delete as #{version}.")
    else:
        out.line(f"Cleared workflow {before['workflow_id']} ({before['status']}) as #{version}.")
    return EXIT_OK


@command
@workflow_argument
@owner_option
@click.option(
    "--workflow-id", metavar="ID", help="Cancel only if this is the stored workflow (else exit 2)."
)
def cancel(
    store: CurrentWorkflow, out: Output, workflow: str | None, owner: str, workflow_id: str | None
) -> int:
    """Cancel a running workflow (default: the current one); its server run stops within 1 s."""
    check_file_owner(store)
    store = _owned(store, owner)
    state = _found(store, workflow)
    if state is not None and workflow_id and workflow_id != state["workflow_id"]:
        raise Refused(
            f"workflow_id {workflow_id!r} is not the stored workflow {state['workflow_id']!r}"
        )
    if state is None or model.is_finished(state):
        return _nothing_to_cancel(state, out)
    try:
        snapshot = store.store.cancel(owner, state["workflow_id"])
    except (model.NoWorkflow, model.WorkflowFinished):
        # It finished or went away between our read and our write.
        after = store.store.get(owner, state["workflow_id"]).state
        if after is None and workflow is not None:
            raise NoSuchWorkflow(owner, workflow) from None
        return _nothing_to_cancel(after, out)
    cancelled = snapshot.state
    assert cancelled is not None
    if out.as_json:
        out.data({"cancelled": True, **model.summarize(cancelled)})
    else:
        out.line(f"Cancelled workflow {cancelled['workflow_id']} at {describe_step(cancelled)}.")
    return EXIT_OK


@command
@click.argument("workflow", metavar="WORKFLOW_ID")
@owner_option
def run(store: CurrentWorkflow, out: Output, workflow: str, owner: str) -> int:
    """Start a server run of a workflow (as POST /workflows/<id>/run)."""
    from .runner.control import LOCAL, RunControl

    check_file_owner(store)
    _owned(store, owner)
    settings = click.get_current_context().find_object(Invocation).settings
    control = RunControl(store.store, settings)
    try:
        snapshot = control.start(owner, workflow, runs_here=False)
    except (model.NoWorkflow, model.WorkflowFinished, runs.RunActive) as error:
        raise Refused(error.message) from None
    except config.ConfigError as error:
        raise Refused(str(error)) from None
    finally:
        control.close()
    state = snapshot.state
    assert state is not None
    if out.as_json:
        out.data({"started": True, **model.summarize(state), "run": state["run"]})
        return EXIT_OK
    where = (
        "a web process of this host takes it within a second"
        if control.mode == LOCAL
        else "a `python -m service worker` takes it"
    )
    out.line(f"Queued run attempt {state['run']['attempt']} of workflow {workflow}: {where}.")
    return EXIT_OK


@cli.command()
@click.option("--burst", is_flag=True, help="Work until the queue is empty, then exit.")
@click.pass_obj
def worker(invocation: Invocation, burst: bool) -> None:
    """Run workflows' steps from the run queue (Redis), with a lease monitor.

    WORKFLOW_RUN_WORKERS processes work at once (RQ's WorkerPool when above 1). SIGTERM or
    Ctrl-C hands the running runs back to the queue and stops within a second.
    """
    out = Output(sys.stdout, sys.stderr, False)
    try:
        settings = invocation.config()
    except ValueError as error:
        out.note(str(error))
        click.get_current_context().exit(EXIT_USAGE)
    with logs.configured(settings["LOG_FORMAT"], level=logging.INFO):
        code = _work(settings, out, burst)
    click.get_current_context().exit(code)


def _work(settings: dict[str, Any], out: Output, burst: bool) -> int:
    """Check the queue can be worked, then work it until stopped (see `worker`)."""
    from rq.worker_pool import WorkerPool

    from .runner.jobs import RunContext, RunWorker
    from .runner.queue import queue_connection

    try:
        check = RunContext(settings)
    except ValueError as error:  # ConfigError, a file backend
        out.note(str(error))
        return EXIT_USAGE
    try:
        connection = queue_connection(settings, check.store)
        queue = check.control.queue
        with on_signals(_interrupt):
            _wait_for(queue, out)
    except ValueError as error:  # redis+cluster:// without WORKFLOW_QUEUE_URL
        out.note(str(error))
        return EXIT_USAGE
    except KeyboardInterrupt:
        return EXIT_OK
    finally:
        check.close()
    name, count = queue.queue.name, settings["RUN_WORKERS"]
    worker_class = RunWorker.with_settings(settings)
    if count > 1:
        pool = WorkerPool(
            [name], connection=connection, num_workers=count, worker_class=worker_class
        )
        pool.start(burst=burst)
    else:
        worker_class([name], connection=connection).work(burst=burst)
    return EXIT_OK


def _wait_for(queue: Any, out: Output) -> None:
    """Return once the queue's Redis answers: a supervisor may start the worker before Redis."""
    waiting = False
    while True:
        try:
            queue.count()
            break
        except StorageUnavailable as error:
            if not waiting:
                out.note(f"waiting for the run queue: {error.message}")
                waiting = True
            time.sleep(WORKER_RETRY_SECONDS)
    if waiting:
        out.note("the run queue answers")


def _nothing_to_cancel(state: dict[str, Any] | None, out: Output) -> int:
    if out.as_json:
        out.data({"cancelled": False, **model.summarize(state)})
    elif state is None:
        out.line("There is no workflow to cancel.")
    else:
        out.line(
            f"Workflow {state['workflow_id']} is already {state['status']}; nothing to cancel."
        )
    return EXIT_OK


@command
@click.option(
    "--limit",
    type=click.IntRange(1, HISTORY_MAX),
    default=HISTORY_MAX,
    metavar="N",
    help=f"How many to list, 1-{HISTORY_MAX} (default {HISTORY_MAX}).",
)
def history(store: CurrentWorkflow, out: Output, limit: int) -> int:
    """List the last finished workflows, newest first."""
    workflows = store.history(limit)
    if out.as_json:
        out.data(workflows)
        return EXIT_OK
    if not workflows:
        out.line(f"No finished workflows in the last {HISTORY_DAYS} days.")
        return EXIT_OK
    out.line(f"{'FINISHED':<26}{'STATUS':<11}{'DONE':<8}WORKFLOW")
    for state in workflows:
        steps = state.get("steps") or []
        done = sum(1 for step in steps if step.get("status") in ("completed", "skipped"))
        out.line(
            f"{state['last_update']:<26}{state['status']:<11}"
            f"{f'{done}/{len(steps)}':<8}{state['workflow_id']}"
        )
    return EXIT_OK


@command(name="list")
@click.option(
    "--status",
    type=click.Choice(STATUSES),
    default="all",
    show_default=True,
    help="Only running workflows, only finished ones (completed, failed, cancelled), or all.",
)
@click.option(
    "--owner",
    default=MIGRATION_OWNER,
    show_default=True,
    metavar="USER",
    help=f"Whose workflows; '{ALL_OWNERS}' for every owner's.",
)
@click.option(
    "--limit",
    type=click.IntRange(min=1),
    default=None,
    metavar="N",
    help="List at most N (default: all of them).",
)
def list_workflows(
    store: CurrentWorkflow, out: Output, status: str, owner: str, limit: int | None
) -> int:
    """List workflows, most recently updated first (expired ones are gone)."""
    owners = store.store.owners() if owner == ALL_OWNERS else [_owned(store, owner).owner]
    # Each owner's list is in order already; with several owners, interleave them by the same
    # order, reading each a page at a time as it is needed.
    lists = [_listed(store.store, name, status, limit) for name in owners]
    entries = itertools.islice(heapq.merge(*lists, key=_list_order, reverse=True), limit)
    if out.as_json:
        out.data(list(entries))
        return EXIT_OK
    owner_width = max([len("OWNER"), *map(len, owners)]) + 2 if owner == ALL_OWNERS else 0
    shown = 0
    for entry in entries:
        if not shown:
            owner_head = f"{'OWNER':<{owner_width}}" if owner_width else ""
            out.line(
                f"{'UPDATED':<26}{'STATUS':<11}{'STEP':<8}{'PROGRESS':<10}{owner_head}WORKFLOW"
            )
        out.line(list_line(entry, owner_width))
        shown += 1
    if not shown:
        which = "" if status == "all" else f"{status} "
        whose = "any owner" if owner == ALL_OWNERS else f"owner {owner}"
        out.line(f"No {which}workflows for {whose}.")
    return EXIT_OK


def _listed(
    backend: StateStore, owner: str, status: str, most: int | None
) -> Iterator[dict[str, Any]]:
    """Yield up to `most` (None: all) of the owner's workflows in list order, page by page."""
    cursor = None
    left = most
    while left is None or left > 0:
        size = LIST_PAGE if left is None else min(LIST_PAGE, left)
        page = backend.list(owner, status=status, limit=size, cursor=cursor)
        for entry in page.entries:
            yield {"owner": owner, **entry}
        if page.next_cursor is None:
            return
        cursor = page.next_cursor
        if left is not None:
            left -= len(page.entries)


def _list_order(entry: dict[str, Any]) -> tuple[int, str, str]:
    # The storage's list order (last_update in ms, then id), then the owner for a tie.
    return score(entry), entry["workflow_id"], entry["owner"]


def list_line(entry: dict[str, Any], owner_width: int = 0) -> str:
    """Return the line `list` prints for a list entry; `owner_width` 0 leaves the owner out."""
    total = entry["total_steps"]
    step = f"{entry['current_step'] + 1}/{total}" if total else "0/0"
    progress = f"{entry['progress_percent']}%"
    owner = f"{entry['owner']:<{owner_width}}" if owner_width else ""
    return (
        f"{entry['last_update']:<26}{entry['status']:<11}{step:<8}{progress:<10}"
        f"{owner}{entry['workflow_id']}"
    )


@command
@workflow_argument
@owner_option
@click.option(
    "--count",
    type=click.IntRange(min=0),
    default=0,
    metavar="N",
    help="Exit after N changes (0: never).",
)
@click.option(
    "--timeout",
    type=click.FloatRange(min=0),
    default=0.0,
    callback=_a_number,
    metavar="SECONDS",
    help="Exit after this many seconds (0: never).",
)
def watch(
    store: CurrentWorkflow,
    out: Output,
    workflow: str | None,
    owner: str,
    count: int,
    timeout: float,
) -> int:
    """Follow a workflow live (default: whichever is current), one line per change, until Ctrl-C."""
    store = _owned(store, owner)
    store.ping()  # fail at once (exit 1) rather than retry quietly when storage is down
    followed: CurrentWorkflow | OneWorkflow = store
    if workflow is not None:
        _found(store, workflow)  # one that is not there: exit 1 rather than wait for it
        followed = OneWorkflow(store.store, owner, workflow)
    watcher = Watcher(followed, out, count, timeout)
    # Explicitly: a shell that starts a job in the background starts it with SIGINT ignored.
    with on_signals(watcher.interrupt):
        return watcher.run()


class OneWorkflow:
    """One workflow of one owner, read and followed as CurrentWorkflow reads the current one."""

    def __init__(self, store: StateStore, owner: str, workflow_id: str) -> None:
        self.store = store
        self.owner = owner
        self.workflow_id = workflow_id
        self.ttl = store.ttl
        self.stale_ttl = store.stale_ttl

    def get(self) -> Snapshot:
        """Return the workflow (state None when it is gone)."""
        return self.store.get(self.owner, self.workflow_id)

    def get_for_stream(self) -> Snapshot:
        """Return the workflow with its event id (the owner's counter when it is gone)."""
        return self.store.get_for_stream(self.owner, self.workflow_id)

    def events(self, stop: threading.Event) -> Iterator[Event]:
        """Yield RESYNCs and this workflow's changes (the owner's counter orders them)."""
        for event in self.store.events(stop):
            if event is RESYNC or (
                event.owner == self.owner and event.workflow_id == self.workflow_id
            ):
                yield event


class Watcher:
    """Follow the store's change feed and print one line per change."""

    def __init__(
        self, store: CurrentWorkflow | OneWorkflow, out: Output, count: int, timeout: float
    ) -> None:
        self.store = store
        self.out = out
        self.count = count
        self.deadline = time.monotonic() + timeout if timeout else None
        self.stop = threading.Event()
        self.interrupted = False
        self.inbox: queue.SimpleQueue[Event | BaseException | object] = queue.SimpleQueue()
        self.shown: int | None = None  # the counter value of the last line printed
        self.state: dict[str, Any] | None = None
        self.expires: float | None = None
        self.changes = 0
        self.need_snapshot = False
        self.storage_down = False

    def _feed(self) -> None:
        try:
            for event in self.store.events(self.stop):
                self.inbox.put(event)
        except BaseException as error:  # handed to the main thread, which decides
            self.inbox.put(error)

    def interrupt(self) -> None:
        """End the watch at once; safe in a signal handler (a flag and a reentrant put)."""
        self.interrupted = True
        self.inbox.put(WAKE)

    def run(self) -> int:
        """Print the current state, then each change, until count, timeout or Ctrl-C."""
        feed = threading.Thread(target=self._feed, name="watch-feed", daemon=True)
        feed.start()
        try:
            while not self._done():
                self._step()
        finally:
            self.stop.set()
            feed.join(timeout=2)
        return EXIT_OK

    def _done(self) -> bool:
        if self.interrupted or (self.count and self.changes >= self.count):
            return True
        return self.deadline is not None and time.monotonic() >= self.deadline

    def _step(self) -> None:
        if self.need_snapshot:
            self._snapshot()
        wait = WATCH_TICK_SECONDS
        if self.deadline is not None:
            wait = max(0.0, min(wait, self.deadline - time.monotonic()))
        try:
            item = self.inbox.get(timeout=wait)
        except queue.Empty:
            self._check_expiry()
            return
        if item is WAKE:
            return
        if isinstance(item, BaseException):
            raise item
        if item is RESYNC:
            # Subscribed (again): whatever happened before is in a fresh snapshot.
            self.need_snapshot = True
            return
        assert isinstance(item, Event)
        self._show_event(item)

    def _snapshot(self) -> None:
        try:
            snapshot = self.store.get_for_stream()
        except StorageUnavailable as error:
            if not self.storage_down:
                self.out.note(f"storage unavailable, retrying: {error.message}")
                self.storage_down = True
            self.stop.wait(WATCH_RETRY_SECONDS)
            return
        if self.storage_down:
            self.out.note("storage is back")
            self.storage_down = False
        self.need_snapshot = False
        event_id = snapshot.event_id or "0"
        seq = _seq(event_id)
        # The same: nothing happened while the feed was away. Otherwise print it, even with a
        # lower counter value (a Redis that lost its data starts again): it is the new baseline.
        if self.shown is not None and seq == self.shown and snapshot.state == self.state:
            return
        kind = "snapshot" if snapshot.state is not None else "none"
        self._print(kind, event_id, seq, snapshot.state, counts=self.shown is not None)

    def _show_event(self, event: Event) -> None:
        seq = _seq(event.id)
        if self.shown is None or self.need_snapshot:
            return  # the snapshot about to be taken covers it
        if seq is not None and seq <= self.shown:
            return  # already covered by the snapshot printed
        state = json.loads(event.json)
        self._print("change" if state is not None else "cleared", event.id, seq, state)

    def _check_expiry(self) -> None:
        if self.state is None or self.expires is None or time.time() < self.expires:
            return
        try:
            snapshot = self.store.get()
        except StorageUnavailable:
            return
        if snapshot.state is None:
            version = self.state["version"]
            self._print("expired", f"{version}:expired", version, None)
        else:
            self.expires = time.time() + WATCH_TICK_SECONDS  # not gone yet: look again soon

    def _print(
        self,
        kind: str,
        event_id: str,
        seq: int | None,
        state: dict[str, Any] | None,
        counts: bool = True,
    ) -> None:
        if self.out.as_json:
            self.out.data(change_record(kind, event_id, state))
        else:
            self.out.line(change_line(kind, event_id, state))
        if seq is not None:
            self.shown = seq
        self.state = state
        self.expires = (
            model.expires_at(state, self.store.ttl, self.store.stale_ttl) if state else None
        )
        # The first line is the state as found; --count counts the changes after it.
        if counts:
            self.changes += 1


def _seq(event_id: str) -> int | None:
    head = event_id.split(":", 1)[0]
    return int(head) if head.isdigit() else None
