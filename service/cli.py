"""Operate the service from a shell: `python -m service list|status|watch|clear|cancel|history`.

The CLI (a click group) reads the same settings as the server, through service/config.py, and
talks to the same storage, so it works on a host with no server running, or beside one. Output
is for people by default and JSON with `--json`. `status`, `watch`, `clear` and `cancel` act on
one workflow of one owner: the WORKFLOW_ID given, else the owner's current one (`--owner`,
default `public`). Exit codes: 0 done (also when there was nothing to do), 1 storage down or no
such workflow (a WORKFLOW_ID the owner does not have), 2 usage error (bad arguments, a bad
setting, a `--workflow-id` guard that is not the stored one); `watch` ends when its workflow
finishes, with 0 completed, 3 failed, 4 cancelled.
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
from .storage import HISTORY_MAX, CurrentWorkflow, FileStore, StateStore, StorageUnavailable
from .storage.base import HISTORY_DAYS, MIGRATION_OWNER, check_workflow_id, dumps, utc_now
from .storage.listing import LIMIT_MAX, STATUSES, score
from .store import build_store
from .stream import (
    CLOSE_FRAME,
    RESYNC_FRAME,
    Frame,
    Hub,
    HubThread,
    Subscription,
    Topic,
    frame_of_snapshot,
    is_news,
)

EXIT_OK = 0
EXIT_STORAGE_DOWN = 1
# Like grep's "nothing found": the workflow named is not there (stderr says which).
EXIT_NO_WORKFLOW = 1
EXIT_USAGE = 2
# How `watch` ends when its workflow finishes.
FINISHED_EXIT = {"completed": EXIT_OK, "failed": 3, "cancelled": 4}
PROG = "python -m service"
# `list --owner '*'`: every owner's workflows.
ALL_OWNERS = "*"
# Workflows `list` reads per storage call, following the cursors: the most one page may hold.
LIST_PAGE = LIMIT_MAX
# How often `watch` wakes up with nothing to read, to notice its deadline.
WATCH_TICK_SECONDS = 0.25
# How long `watch` waits between tries to re-read the state while storage is down.
WATCH_RETRY_SECONDS = 0.5
# How long a starting worker waits between tries to reach the queue's Redis.
WORKER_RETRY_SECONDS = 1.0


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


def state_words(state: dict[str, Any]) -> str:
    """Return e.g. `vast-1 running step 2/6 set_ui_home in_progress 33.33%`."""
    progress = model.progress_percent(state)
    return f"{state['workflow_id']} {state['status']} {describe_step(state)} {progress}%"


def change_line(kind: str, event_id: str, state: dict[str, Any] | None) -> str:
    """Return the one-line human description `watch` prints for a change."""
    if state is None:
        stamp = model.format_time(utc_now())
        what = {"expired": "expired", "cleared": "cleared"}.get(kind, "no workflow")
        return f"{stamp} #{event_id} {what}"
    return f"{state['last_update']} #{event_id} {state_words(state)}"


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
    "configuration error; watch: 3 the workflow failed, 4 it was cancelled.",
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
            ("Progress", f"{summary['completed_percent']}% done"),
            ("Started", summary["start_time"]),
            ("Updated", summary["last_update"]),
            ("Version", state["version"]),
            *_run_lines(state),
        ):
            out.line(f"{label:<10}{value}")
    out.line(f"{'Storage':<10}{store.describe()}")
    return EXIT_OK


def _run_lines(state: dict[str, Any]) -> list[tuple[str, str]]:
    """Return what `status` says of a workflow's server run: waiting, asking, retrying."""
    lines: list[tuple[str, str]] = []
    run = state.get("run")
    if isinstance(run, dict):
        lines.append(("Run", f"{run.get('status')} (attempt {run.get('attempt')})"))
    index = runs.blocked_step(state)
    if index is not None:
        asked = state["steps"][index].get("blocked") or {}
        lines.append(("Asks", one_line(str(asked.get("message", "")))))
        names = ", ".join(f"{f.get('name')} ({f.get('type')})" for f in asked.get("input") or [])
        lines.append(
            (
                "Answer",
                f"python -m service resume {state['workflow_id']} "
                + (f"--input NAME=VALUE ... [{names}]" if names else "(no input)"),
            )
        )
    for step in state.get("steps") or ():
        if step.get("retry_at") and step.get("status") == "in_progress":
            lines.append(("Retry", f"{step.get('action')} again at {step['retry_at']}"))
    if state.get("status") == "failed":
        lines.append(("Retry", f"python -m service retry {state['workflow_id']}"))
    return lines


BOOLEANS = {"true": True, "yes": True, "1": True, "false": False, "no": False, "0": False}


def _answers(state: dict[str, Any], given: tuple[str, ...]) -> dict[str, Any]:
    """Return the input for a blocked step from `--input NAME=VALUE`s; prompt for secrets."""
    index = runs.blocked_step(state)
    fields = (
        (state["steps"][index].get("blocked") or {}).get("input") or [] if index is not None else []
    )
    by_name = {field.get("name"): field for field in fields}
    answers: dict[str, Any] = {}
    for item in given:
        name, sep, value = item.partition("=")
        field = by_name.get(name)
        if not sep or field is None:
            raise Refused(f"--input {name!r}: give NAME=VALUE for one of the fields the step asks")
        if field.get("type") == "secret":
            raise Refused(f"{name} is a secret: it is asked for, never taken from the command line")
        if field.get("type") == "boolean":
            if value.lower() not in BOOLEANS:
                raise Refused(f"{name} is true or false (yes/no, 1/0), not {value!r}")
            answers[name] = BOOLEANS[value.lower()]
        else:
            answers[name] = value
    for name, field in by_name.items():
        if field.get("type") == "secret" and name not in answers:
            answers[name] = click.prompt(field.get("label") or name, hide_input=True, err=True)
    return answers


@command
@click.argument("workflow", metavar="WORKFLOW_ID")
@click.option(
    "--input",
    "inputs",
    multiple=True,
    metavar="NAME=VALUE",
    help="An answer to the blocked step's question (repeat it); a secret is asked for instead.",
)
@owner_option
def resume(
    store: CurrentWorkflow, out: Output, workflow: str, inputs: tuple[str, ...], owner: str
) -> int:
    """Answer a blocked workflow's question and run it on from that step (POST .../resume)."""
    from .runner.control import RunControl

    check_file_owner(store)
    _owned(store, owner)
    state = store.store.get(owner, check_workflow_id(workflow)).state
    if state is None:
        raise NoSuchWorkflow(owner, workflow)
    body = {"input": _answers(state, inputs)}
    settings = click.get_current_context().find_object(Invocation).settings
    control = RunControl(store.store, settings)
    try:
        snapshot = control.resume(owner, workflow, body, runs_here=False)
    except model.NoWorkflow:
        raise NoSuchWorkflow(owner, workflow) from None
    except (model.NotBlocked, model.InvalidInput, runs.RunActive) as error:
        raise Refused(error.message) from None
    finally:
        control.close()
    resumed = snapshot.state
    assert resumed is not None
    if out.as_json:
        out.data({"resumed": True, **model.summarize(resumed), "run": resumed["run"]})
        return EXIT_OK
    out.line(f"Resumed workflow {workflow}: run attempt {resumed['run']['attempt']} is queued.")
    return EXIT_OK


@command
@click.argument("workflow", metavar="WORKFLOW_ID")
@owner_option
def retry(store: CurrentWorkflow, out: Output, workflow: str, owner: str) -> int:
    """Run a failed workflow again from its failed step (as POST /workflows/<id>/retry)."""
    from .runner.control import RunControl

    check_file_owner(store)
    _owned(store, owner)
    settings = click.get_current_context().find_object(Invocation).settings
    control = RunControl(store.store, settings)
    try:
        snapshot = control.retry(owner, check_workflow_id(workflow), runs_here=False)
    except model.NoWorkflow:
        raise NoSuchWorkflow(owner, workflow) from None
    except (model.NotFailed, runs.RunActive) as error:
        raise Refused(error.message) from None
    finally:
        control.close()
    retried = snapshot.state
    assert retried is not None
    if out.as_json:
        out.data({"retried": True, **model.summarize(retried), "run": retried["run"]})
        return EXIT_OK
    step = retried["steps"][retried["current_step"]] if retried["steps"] else None
    where = f" from step {retried['current_step'] + 1} ({step['action']})" if step else ""
    out.line(
        f"Retrying workflow {workflow}{where}: run attempt {retried['run']['attempt']} is queued."
    )
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
        out.line("Nothing to clear.")
    else:
        out.line(f"Cleared workflow {before['workflow_id']} (it was {before['status']}).")
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
        step = current_step(cancelled)
        where = (
            f" at step {step['index'] + 1} of {len(cancelled['steps'])} ({step['action']})"
            if step is not None
            else ""
        )
        out.line(f"Cancelled workflow {cancelled['workflow_id']}{where}.")
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
    except model.NoWorkflow:
        raise NoSuchWorkflow(owner, workflow) from None
    except (model.WorkflowFinished, runs.RunActive) as error:
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
    usage = _owner_usage(store.store, owners) if owner == ALL_OWNERS else {}
    if out.as_json:
        # Every owner's share, beside each of its workflows: queued runs and stored bytes.
        out.data([{**entry, **usage.get(entry["owner"], {})} for entry in entries])
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
    if usage:
        out.line("")
        out.line(f"{'OWNER':<{owner_width}}{'QUEUED RUNS':<13}STORED")
        for name, share in sorted(usage.items()):
            out.line(
                f"{name:<{owner_width}}{share['owner_queued_runs']:<13}{share['owner_bytes']} bytes"
            )
    return EXIT_OK


def _owner_usage(backend: StateStore, owners: list[str]) -> dict[str, dict[str, int]]:
    """Return each owner's queued runs and stored bytes (what an admin's list shows)."""
    from .runner.control import RunControl

    settings = click.get_current_context().find_object(Invocation).settings
    control = RunControl(backend, settings)
    try:
        queued = control.queued_by_owner()
    except (StorageUnavailable, config.ConfigError):
        queued = {}  # the queue's Redis may be another one, and down: the bytes still tell
    finally:
        control.close()
    return {
        name: {"owner_queued_runs": queued.get(name, 0), "owner_bytes": backend.owner_bytes(name)}
        for name in owners
    }


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
    help="Exit after printing N lines, the first included (0: no limit).",
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
    """Follow a workflow live (default: whichever is current), one line per change.

    Ends when the workflow finishes: exit 0 completed, 3 failed, 4 cancelled. Ctrl-C, --count
    and --timeout end it sooner, with exit 0.
    """
    store = _owned(store, owner)
    store.ping()  # fail at once (exit 1) rather than retry quietly when storage is down
    if workflow is not None:
        _found(store, workflow)  # one that is not there: exit 1 rather than wait for it
    watcher = Watcher(store.store, (owner, workflow), out, count, timeout)
    # Explicitly: a shell that starts a job in the background starts it with SIGINT ignored.
    with on_signals(watcher.interrupt):
        return watcher.run()


# Put in the watch's inbox by a signal handler, so that it wakes up at once.
WAKE = Frame("wake", None, "", False)
# The record fields that change with every write: not a change a person sees.
VOLATILE = ("id", "kind", "last_update")
# What `watch` has shown before its first line: nothing, not even "no workflow".
NO_LINE = object()


class Watcher:
    """Print a workflow as found, then each change of what a line shows, until it finishes.

    A stream hub of its own, the one the server's live streams use, follows the change feed and
    announces expiry; this reads the hub's frames of one topic (one workflow, or the owner's
    current one) as a server stream does, with a fresh snapshot after each resync.
    """

    def __init__(
        self, store: StateStore, topic: Topic, out: Output, count: int, timeout: float
    ) -> None:
        self.hub = Hub(store)
        self.topic = topic
        self.out = out
        self.count = count
        self.deadline = time.monotonic() + timeout if timeout else None
        self.interrupted = False
        self.subscription: Subscription | None = None
        self.sent: Frame | None = None  # the last frame taken in, printed or not
        self.shown: Any = NO_LINE  # what the last line printed showed
        self.lines = 0
        self.finished: int | None = None  # the exit code, once the workflow finished
        self.storage_down = False

    def interrupt(self) -> None:
        """End the watch at once; safe in a signal handler (a flag and a reentrant put)."""
        self.interrupted = True
        if self.subscription is not None:
            self.subscription.put(WAKE)

    def run(self) -> int:
        """Print the state, then each change, until it finishes, count, timeout or Ctrl-C."""
        self.subscription = self.hub.subscribe(self.topic)
        try:
            resync = True
            while not self._done():
                if resync and self._snapshot():
                    resync = False
                    continue
                frame = self._next(WATCH_RETRY_SECONDS if resync else WATCH_TICK_SECONDS)
                if frame is RESYNC_FRAME:
                    resync = True
                elif frame is CLOSE_FRAME:  # fell far behind (a slow reader): start afresh
                    self.hub.unsubscribe(self.subscription)
                    self.subscription = self.hub.subscribe(self.topic)
                    resync = True
                elif frame not in (None, WAKE) and self.sent and is_news(frame, self.sent):
                    self._take_change(frame)
        finally:
            self.hub.unsubscribe(self.subscription)
            self._close_hub()
        return self.finished if self.finished is not None else EXIT_OK

    def _done(self) -> bool:
        if self.interrupted or self.finished is not None:
            return True
        if self.count and self.lines >= self.count:
            return True
        return self.deadline is not None and time.monotonic() >= self.deadline

    def _next(self, wait: float) -> Frame | None:
        if self.deadline is not None:
            wait = max(0.0, min(wait, self.deadline - time.monotonic()))
        assert self.subscription is not None
        try:
            return self.subscription.get(timeout=wait)
        except queue.Empty:
            return None

    def _snapshot(self) -> bool:
        """Take in the state as it is now; False when storage did not answer."""
        try:
            snapshot = self.hub.store.get_for_stream(*self.topic)
        except StorageUnavailable as error:
            if not self.storage_down:
                self.out.note(f"storage unavailable, retrying: {error.message}")
                self.storage_down = True
            return False
        if self.storage_down:
            self.out.note("storage is back")
            self.storage_down = False
        frame = frame_of_snapshot(snapshot)
        self.hub.track(self.topic, snapshot.state, frame.seq)
        # After a resync this is the baseline, even with a lower counter value (a Redis that
        # lost its data); a line only if it shows something else than the last one.
        kind = "snapshot" if snapshot.state is not None else "none"
        self._take(frame, kind, snapshot.state)
        return True

    def _take_change(self, frame: Frame) -> None:
        if frame.id.endswith(":expired"):
            self._take(frame, "expired", None)
        elif frame.is_null:
            self._take(frame, "cleared", None)
        else:
            # The frame's data is the GET /workflow/state body, state included.
            data = frame.text.split("\ndata: ", 1)[1]
            self._take(frame, "change", json.loads(data)["state"])

    def _take(self, frame: Frame, kind: str, state: dict[str, Any] | None) -> None:
        self.sent = frame
        record = change_record(kind, frame.id, state)
        # No workflow, cleared and expired show the same: nothing there.
        shows = (
            None
            if state is None
            else (
                {k: v for k, v in record.items() if k not in VOLATILE}
                if self.out.as_json
                else state_words(state)
            )
        )
        if shows == self.shown:
            return  # a write that changed nothing this prints (a run's lease, say)
        self.shown = shows
        if self.out.as_json:
            self.out.data(record)
        else:
            self.out.line(change_line(kind, frame.id, state))
        self.lines += 1
        if model.is_finished(state):
            assert state is not None
            self.finished = FINISHED_EXIT[state["status"]]

    def _close_hub(self) -> None:
        """Stop the hub's threads before the store they read is closed."""
        self.hub.close()
        for thread in threading.enumerate():
            if isinstance(thread, HubThread) and thread.hub is self.hub:
                thread.join(timeout=2)
