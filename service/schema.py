"""Every request and response body of the HTTP contract, defined once.

These pydantic types are the one source of the contract's bodies. The model validates writes
and stored documents with them (`check_state`, `check_stored`, `check_step_change`), and
GET /openapi.json publishes their JSON Schema (`components()`), from which docs/api.md is
generated. A field's `description` is its rule: a refused field is answered
`Invalid field '<path>': <description>`, so the 400 and the document say the same sentence.

Validation checks plain dicts and keeps them: the TypeAdapters are built once at import and
strict (no coercion: "1" is not an integer and true is not 1), and nothing builds a model object
on a write's path. Bodies are TypedDicts for that reason.
"""

from __future__ import annotations

import functools
import json
import math
import re
from datetime import datetime
from typing import Annotated, Any, Literal, NotRequired

from pydantic import AfterValidator, ConfigDict, Field, TypeAdapter, ValidationError, with_config
from pydantic.json_schema import GenerateJsonSchema
from typing_extensions import TypeAliasType, TypedDict

STATUSES = ("running", "completed", "failed", "cancelled")
STEP_STATUSES = ("pending", "in_progress", "completed", "failed", "skipped", "cancelled")
# Only the server sets `blocked` (a step that waits for the person): stored states may hold it.
BLOCKED = "blocked"
STORED_STATUSES = (*STATUSES, BLOCKED)
STORED_STEP_STATUSES = (*STEP_STATUSES, BLOCKED)
RUN_STATUSES = ("queued", "running", "waiting", "done")
# A step's options (`timeout_seconds`, `retry`): their bounds.
STEP_TIMEOUT_MAX = 86400
RETRY_ATTEMPTS_MAX = 20
BACKOFF_MAX = 3600
# What a blocked step may ask for, and what a progress report may say.
INPUT_FIELDS_MAX = 20
INPUT_TYPES = ("text", "secret", "boolean", "choice")
INPUT_NAME_PATTERN = r"^[a-z][a-z0-9_]{0,63}$"
PROGRESS_MESSAGE_MAX = 500
TASKS_MAX = 100
TASK_STATUSES = ("pending", "in_progress", "completed", "failed", "skipped")
LABEL_MAX = 200
# A real workflow has a handful of steps; the cap keeps hostile bodies from costing CPU per write.
MAX_STEPS = 1000
# Deeper documents are almost certainly hostile and make every later json.dumps expensive.
MAX_DEPTH = 32
# A step PATCH's data lands three levels down (state, steps, step) and must fit MAX_DEPTH there.
MAX_DATA_DEPTH = MAX_DEPTH - 3
# The most finished workflows GET /workflow/history answers (storage keeps as many).
HISTORY_MAX = 100
# The most workflows one page of GET /workflows answers.
LIST_LIMIT_MAX = 100
WORKFLOW_ID_PATTERN = r"^[A-Za-z0-9_.:-]{1,128}$"
# Ids a new workflow may not take: its Location would name a route ("stream"), or a path segment
# every URL library removes.
RESERVED_IDS = ("stream", ".", "..")
USER_NAME_PATTERN = r"^[A-Za-z0-9_.@-]{1,64}$"
ERROR_CODE_PATTERN = r"^[a-z]+(_[a-z]+)*$"
ENCRYPTED_MARK = "$encrypted"
# Where the OpenAPI document keeps these schemas; a $ref between bodies points there.
REF_TEMPLATE = "#/components/schemas/{model}"
JSON = "application/json"

Schema = dict[str, Any]


def python_pattern(pattern: str) -> re.Pattern[str]:
    """Compile a ^...$ JSON Schema pattern for re.match, where $ would allow a final newline."""
    return re.compile(pattern.removeprefix("^").removesuffix("$") + r"\Z")


def one_of(values: tuple[str, ...]) -> str:
    """Return the rule sentence for an enumeration."""
    return "must be one of " + ", ".join(values)


def ref(name: str) -> Schema:
    """Return a $ref to the component schema `name`."""
    return {"$ref": REF_TEMPLATE.format(model=name)}


def _iso_8601(text: str) -> str:
    datetime.fromisoformat(text)  # ValueError: pydantic reports the field
    return text


def _not_reserved(text: str) -> str:
    if text in RESERVED_IDS:
        raise ValueError("reserved")
    return text


def _non_empty(text: str) -> str:
    # Not Field(min_length=1): pydantic's length check refuses a lone surrogate ("\ud800"),
    # which is valid JSON and was always accepted.
    if not text:
        raise ValueError("empty")
    return text


def _rule(description: str, **extra: Any) -> Any:
    """Return a Field whose description is the rule an error message quotes."""
    return Field(description=description, json_schema_extra=extra or None)


# --- the pieces ------------------------------------------------------------------------------

WorkflowId = TypeAliasType(
    "WorkflowId",
    Annotated[
        str,
        Field(pattern=WORKFLOW_ID_PATTERN),
        _rule("must be 1-128 characters of A-Z a-z 0-9 _ . : -"),
    ],
)
NewWorkflowId = TypeAliasType(
    "NewWorkflowId",
    Annotated[
        str,
        Field(pattern=WORKFLOW_ID_PATTERN),
        AfterValidator(_not_reserved),
        _rule(
            "must be 1-128 characters of A-Z a-z 0-9 _ . : -, and not stream, . or .. (they "
            "name routes, not workflows)",
            **{"not": {"enum": list(RESERVED_IDS)}},
        ),
    ],
)
UserName = TypeAliasType(
    "UserName",
    Annotated[
        str,
        Field(pattern=USER_NAME_PATTERN),
        _rule(
            "must be 1-64 characters of A-Z a-z 0-9 _ . @ - (not . or .. alone)",
            **{"not": {"enum": [".", ".."]}},
        ),
    ],
)
WorkflowStatus = TypeAliasType(
    "WorkflowStatus", Annotated[Literal[STATUSES], _rule(one_of(STATUSES))]
)
StepStatus = TypeAliasType(
    "StepStatus", Annotated[Literal[STEP_STATUSES], _rule(one_of(STEP_STATUSES))]
)
StoredStatus = TypeAliasType(
    "StoredStatus",
    Annotated[
        Literal[STORED_STATUSES],
        _rule(one_of(STORED_STATUSES) + " (blocked: set only by the server)"),
    ],
)
StoredStepStatus = TypeAliasType(
    "StoredStepStatus",
    Annotated[
        Literal[STORED_STEP_STATUSES],
        _rule(one_of(STORED_STEP_STATUSES) + " (blocked: set only by the server)"),
    ],
)
RunStatus = TypeAliasType(
    "RunStatus", Annotated[Literal[RUN_STATUSES], _rule(one_of(RUN_STATUSES))]
)
Time = TypeAliasType(
    "Time",
    Annotated[
        str, AfterValidator(_iso_8601), _rule("must be an ISO-8601 string", format="date-time")
    ],
)
ErrorCode = Annotated[str, Field(pattern=ERROR_CODE_PATTERN)]
NonEmptyText = Annotated[
    str, AfterValidator(_non_empty), _rule("must be a non-empty string", minLength=1)
]
CurrentStep = Annotated[int, Field(ge=0), _rule("must be an integer >= 0")]
# What a write may set: a step's index (0 with no steps), so never past the most steps there are.
NewCurrentStep = Annotated[
    int,
    Field(ge=0, le=MAX_STEPS - 1),
    _rule(
        f"must be an integer from 0 to {MAX_STEPS - 1}: less than the number of steps, 0 when "
        "there are none"
    ),
]
Version = Annotated[int, Field(ge=1), _rule("must be an integer >= 1")]
SshConnection = Annotated[str | None, _rule("must be a string or null")]
Progress = Annotated[
    float,
    Field(ge=0, le=100),
    Field(description="(current_step + 1) / total_steps * 100, 2 decimals; 0 with no steps"),
]
SseId = Annotated[str, Field(pattern=r"^[0-9]+(:expired)?$")]
SseRetry = Annotated[int, Field(ge=0)]


def sse_data(component: str) -> Any:
    """Return the Field of an event's `data`: JSON text holding the component `component`."""
    return Field(json_schema_extra={"contentMediaType": JSON, "contentSchema": ref(component)})


# --- the state -------------------------------------------------------------------------------


@with_config(ConfigDict(extra="forbid", strict=True))
class RetryPolicy(TypedDict, total=False):
    """How often a server run calls a failing step again, and how long it waits in between:
    min(backoff_seconds * 2^(k-1), max_backoff_seconds) after the k-th failed call, +-10 %."""

    max_attempts: Annotated[
        int,
        Field(ge=1, le=RETRY_ATTEMPTS_MAX),
        _rule(f"must be an integer from 1 to {RETRY_ATTEMPTS_MAX} (default 1: no retry)"),
    ]
    backoff_seconds: Annotated[
        float,
        Field(ge=0, le=BACKOFF_MAX),
        _rule(f"must be a number of seconds from 0 to {BACKOFF_MAX} (default 2)"),
    ]
    max_backoff_seconds: Annotated[
        float,
        Field(ge=0, le=BACKOFF_MAX),
        _rule(f"must be a number of seconds from 0 to {BACKOFF_MAX} (default 300)"),
    ]


StepTimeout = Annotated[
    float,
    Field(ge=1, le=STEP_TIMEOUT_MAX),
    _rule(
        f"must be a number of seconds from 1 to {STEP_TIMEOUT_MAX}: how long the step's "
        "endpoint may take"
    ),
]
Retry = Annotated[
    RetryPolicy, _rule("must be an object of max_attempts, backoff_seconds and max_backoff_seconds")
]


@with_config(ConfigDict(extra="allow", strict=True))
class Step(TypedDict):
    """A step; its other fields (index, label, data, ...) are kept as sent, except the ones the
    server owns (attempts, blocked, retry_at, progress, tasks)."""

    action: NonEmptyText
    status: StepStatus
    data: NotRequired[Annotated[Any, Field(description="kept as sent; a step PATCH sets it")]]
    timeout_seconds: NotRequired[StepTimeout]
    retry: NotRequired[Retry]


@with_config(ConfigDict(extra="allow", strict=True))
class StoredStep(Step):
    """A step as stored and served: also `blocked` (set only by the server)."""

    status: StoredStepStatus  # type: ignore[misc]


Steps = Annotated[
    list[Step],
    Field(max_length=MAX_STEPS),
    _rule(f"must be a list of at most {MAX_STEPS} step objects"),
]
StoredSteps = Annotated[
    list[StoredStep],
    Field(max_length=MAX_STEPS),
    _rule(f"must be a list of at most {MAX_STEPS} step objects"),
]
Label = Annotated[
    str,
    Field(max_length=LABEL_MAX),
    _rule(f"must be a string of at most {LABEL_MAX} characters: what names the workflow"),
]


# A whole new state: non-empty, and current_step 0 unless there are steps (the part of "below
# the number of steps" that JSON Schema can say).
NEW_STATE_SCHEMA: Schema = {
    "minProperties": 1,
    "if": {"required": ["steps"], "properties": {"steps": {"minItems": 1}}},
    "else": {"properties": {"current_step": {"const": 0}}},
}


@with_config(ConfigDict(extra="allow", strict=True, json_schema_extra=NEW_STATE_SCHEMA))
class StateInput(TypedDict, total=False):
    """A whole state to save (POST), any Content-Type, a non-empty JSON object.

    Absent fields get defaults: workflow_id `workflow_<ms>_<random>`, status `running`,
    current_step 0, steps [], start_time now. current_step must be below the number of steps,
    and 0 when there are none. The server sets `version` and `last_update` whatever is sent;
    other fields are kept as sent.
    """

    workflow_id: NewWorkflowId
    status: WorkflowStatus
    current_step: NewCurrentStep
    steps: Steps
    start_time: Time
    ssh_connection: SshConnection
    label: Label


@with_config(ConfigDict(extra="allow", strict=True, json_schema_extra={"minProperties": 1}))
class MergeInput(StateInput, total=False):
    """Top-level fields that replace the stored ones (PATCH); the result must satisfy the POST
    rules. A workflow_id, when given, must equal the stored one (a guard, else 409)."""

    # A guard names a stored workflow: any id, even one a new workflow may no longer take.
    workflow_id: WorkflowId


@with_config(ConfigDict(extra="allow", strict=True, json_schema_extra=NEW_STATE_SCHEMA))
class CreateWorkflowInput(StateInput, total=False):
    """A new workflow (POST /workflows): the rules of StateInput, plus `run`."""

    run: Annotated[bool, Field(description="start a server run at once")]


@with_config(ConfigDict(extra="allow", strict=True))
class StepChange(TypedDict):
    """A step PATCH: the step's new status, and data that replaces the step's data. A
    workflow_id, when given, is a guard: it must equal the stored one (else 409)."""

    status: StepStatus
    data: NotRequired[Annotated[dict[str, Any] | None, _rule("must be an object or null")]]
    workflow_id: NotRequired[Annotated[str | None, _rule("must be a string or null")]]
    timeout_seconds: NotRequired[StepTimeout]
    retry: NotRequired[Retry]


@with_config(ConfigDict(extra="forbid", strict=True))
class Run(TypedDict):
    """A server run of the workflow, in the state's `run` field: who runs
    it and until when. service/runs.py holds its rules."""

    attempt: Annotated[
        int,
        Field(ge=1),
        _rule("must be an integer >= 1: the fencing token, +1 per new run or takeover"),
    ]
    runner: Annotated[str | None, _rule("must be the runner's host:pid, or null while queued")]
    heartbeat: Annotated[Time, Field(description="when the run was queued or its lease renewed")]
    lease_expires: Annotated[
        Time,
        Field(
            description="when another runner may take over (waiting: when the step is tried again)"
        ),
    ]
    status: RunStatus
    takeovers: NotRequired[
        Annotated[int, Field(ge=0, description="takeovers of this run after an interruption")]
    ]
    queued_at: NotRequired[Annotated[Time, Field(description="when this run was queued")]]
    started_at: NotRequired[
        Annotated[Time | None, Field(description="when a runner claimed this run (null: not yet)")]
    ]
    failures: NotRequired[
        Annotated[int, Field(ge=0, description="failed calls of the running step in this run")]
    ]
    interruptions: NotRequired[
        Annotated[
            int, Field(ge=0, description="times the running step's runner died during its call")
        ]
    ]
    call: NotRequired[
        Annotated[
            dict[str, Any] | None,
            Field(description="the running step's call: its index and its progress token's hash"),
        ]
    ]


@with_config(ConfigDict(extra="allow", strict=True))
class State(TypedDict):
    """A stored state as served. `version` comes from a counter that never goes back (it
    survives DELETE and expiry); `ssh_connection` is null when it is stored encrypted and no
    configured key opens it. Other fields are kept as sent."""

    workflow_id: WorkflowId
    status: StoredStatus
    current_step: CurrentStep
    steps: StoredSteps
    start_time: Time
    ssh_connection: NotRequired[SshConnection]
    last_update: Time
    version: Version
    completed_percent: NotRequired[
        Annotated[
            float,
            Field(
                ge=0,
                le=100,
                description="steps completed or skipped, plus the running step's own progress, "
                "of all steps x 100 (2 decimals; 0 with no steps)",
            ),
        ]
    ]
    incarnation: NotRequired[
        Annotated[
            Version,
            Field(
                description="the version the workflow was created with: a workflow deleted and "
                "created again under the same id has another"
            ),
        ]
    ]
    run: NotRequired[Run]


Sealed = TypedDict("Sealed", {ENCRYPTED_MARK: str})
Sealed.__pydantic_config__ = ConfigDict(extra="forbid", strict=True)  # type: ignore[attr-defined]


@with_config(ConfigDict(extra="allow", strict=True))
class StoredState(State):
    """A state as a backend holds it: a secret field may be sealed ({"$encrypted": token})."""

    ssh_connection: NotRequired[Annotated[str | Sealed | None, _rule("must be a string")]]


# --- answers ---------------------------------------------------------------------------------


@with_config(ConfigDict(extra="forbid"))
class Error(TypedDict):
    """Every error answer has exactly this shape, and never a stack trace."""

    success: Literal[False]
    message: Annotated[str, Field(min_length=1, description="for a person")]
    error: ErrorCode


@with_config(ConfigDict(extra="forbid"))
class StateResponse(TypedDict):
    """The current state, or null."""

    success: Literal[True]
    active: Annotated[
        bool, Field(description="true exactly when status is running or blocked (not finished)")
    ]
    progress_percent: Annotated[
        float, Field(ge=0, le=100, description="the summary's progress_percent (0 with no state)")
    ]
    state: State | None


@with_config(ConfigDict(extra="forbid"))
class SavedResponse(TypedDict):
    """A write was accepted: the state as stored."""

    success: Literal[True]
    message: Literal["Workflow state saved"]
    state: State


@with_config(ConfigDict(extra="forbid"))
class ClearedResponse(TypedDict):
    """The state is gone (also when there was none)."""

    success: Literal[True]
    message: Literal["Workflow state cleared"]


@with_config(ConfigDict(extra="forbid"))
class StateSummary(TypedDict):
    """The summary of a stored state."""

    active: bool
    workflow_id: WorkflowId
    status: StoredStatus
    current_step: CurrentStep
    total_steps: Annotated[int, Field(ge=0)]
    progress_percent: Progress
    completed_percent: Annotated[
        float,
        Field(ge=0, le=100, description="how much of the workflow is done, for a person"),
    ]
    start_time: Time
    last_update: Time


@with_config(ConfigDict(extra="forbid"))
class NoSummary(TypedDict):
    """The summary when there is no stored state."""

    active: Literal[False]
    workflow_id: None
    status: None


Summary = TypeAliasType("Summary", StateSummary | NoSummary)


@with_config(ConfigDict(extra="forbid"))
class SummaryResponse(TypedDict):
    """Progress at a glance."""

    success: Literal[True]
    summary: Summary


@with_config(ConfigDict(extra="forbid"))
class HistoryResponse(TypedDict):
    """The last finished workflows."""

    success: Literal[True]
    workflows: Annotated[
        list[State],
        Field(
            max_length=HISTORY_MAX, description="finished states of the last 7 days, newest first"
        ),
    ]


@with_config(ConfigDict(extra="forbid"))
class PageStep(TypedDict):
    """A step the page shows."""

    action: WorkflowId
    label: Annotated[str, Field(min_length=1)]
    endpoint: NotRequired[
        Annotated[str, Field(description="the host application's action, POSTed by the page")]
    ]


@with_config(ConfigDict(extra="forbid"))
class ConfigResponse(TypedDict):
    """The page's steps, its pause between steps and its live feed."""

    success: Literal[True]
    steps: Annotated[list[PageStep], Field(min_length=1)]
    step_delay_ms: Annotated[int, Field(ge=0)]
    stream_url: NotRequired[
        Annotated[
            str | None, Field(description="the live-updates path, null when this server has none")
        ]
    ]


class StateEvent(TypedDict):
    """One Server-Sent Event of a state stream (OpenAPI 3.1 describes each event of a stream).

    The first is the current snapshot, then one per accepted write or delete; an expiry's id is
    `<last version>:expired`. Comment lines (`: keepalive`) come at least every 15 s."""

    event: Literal["state"]
    id: NotRequired[SseId]
    retry: NotRequired[SseRetry]
    data: Annotated[str, sse_data("StateResponse")]


@with_config(ConfigDict(extra="forbid"))
class ActionResponse(TypedDict):
    """The step simulator's answer; success is false for WORKFLOW_DEMO_FAIL."""

    success: bool
    message: str
    error: NotRequired[ErrorCode]


@with_config(ConfigDict(extra="forbid"))
class Health(TypedDict):
    """The process is alive."""

    status: Literal["ok"]


@with_config(ConfigDict(extra="forbid"))
class Ready(TypedDict):
    """Storage answers."""

    success: Literal[True]
    status: Literal["ready"]
    backend: NotRequired[Annotated[str, Field(description="where the state lives, no credentials")]]


@with_config(ConfigDict(extra="allow"))
class OpenAPIDocument(TypedDict):
    """An OpenAPI 3.1 document."""

    openapi: str
    info: dict[str, Any]
    paths: dict[str, Any]


# --- many workflows and server runs -------------------------------


@with_config(ConfigDict(extra="forbid"))
class WorkflowEntry(StateSummary):
    """One workflow in a list: its summary and version (and its owner in an admin's `owner=*`)."""

    version: Version
    owner: NotRequired[UserName]


@with_config(ConfigDict(extra="forbid"))
class WorkflowList(TypedDict):
    """One page of the owner's workflows, most recent last_update first."""

    success: Literal[True]
    workflows: Annotated[list[WorkflowEntry], Field(max_length=LIST_LIMIT_MAX)]
    next_cursor: Annotated[
        str | None, Field(description="pass as ?cursor= for the next page; null on the last")
    ]


@with_config(ConfigDict(extra="forbid"))
class WorkflowGone(TypedDict):
    """A workflow that was deleted or expired."""

    workflow_id: WorkflowId
    state: None


WorkflowChange = TypeAliasType("WorkflowChange", WorkflowEntry | WorkflowGone)


class WorkflowEvent(TypedDict):
    """One Server-Sent Event of GET /workflows/stream: a workflow of the owner changed."""

    event: Literal["workflow"]
    id: NotRequired[str]
    retry: NotRequired[SseRetry]
    data: Annotated[str, sse_data("WorkflowChange")]


@with_config(ConfigDict(extra="forbid"))
class RunStarted(TypedDict):
    """A server run was queued (202)."""

    success: Literal[True]
    message: Literal["Workflow run started"]
    state: State


Created = TypeAliasType("Created", SavedResponse | RunStarted)


@with_config(ConfigDict(extra="forbid"))
class CancelledResponse(TypedDict):
    """The workflow is cancelled (also when it already was): its running step, itself and its
    server run; a runner stops within a second."""

    success: Literal[True]
    message: Literal["Workflow cancelled"]
    state: State


# --- runs that ask, report and recover -------------------------------------------------------


@with_config(ConfigDict(extra="forbid", strict=True))
class InputField(TypedDict):
    """One answer a blocked step asks the person for."""

    name: Annotated[
        str,
        Field(pattern=INPUT_NAME_PATTERN),
        _rule("must be 1-64 characters of a-z 0-9 _, starting with a letter"),
    ]
    label: NotRequired[Annotated[str, Field(max_length=LABEL_MAX), _rule("must be a string")]]
    type: Annotated[Literal[INPUT_TYPES], _rule(one_of(INPUT_TYPES))]
    choices: NotRequired[
        Annotated[
            list[Annotated[str, Field(max_length=LABEL_MAX)]],
            Field(min_length=1, max_length=100),
            _rule("must be a list of 1-100 strings (a choice field's options)"),
        ]
    ]
    required: NotRequired[Annotated[bool, _rule("must be true or false (default true)")]]


@with_config(ConfigDict(extra="forbid", strict=True))
class BlockedQuestion(TypedDict):
    """What a step endpoint's `blocked` answer asks: a message and the input it needs."""

    message: Annotated[
        str, Field(max_length=PROGRESS_MESSAGE_MAX * 4), _rule("must be a string for the person")
    ]
    input: NotRequired[
        Annotated[
            list[InputField],
            Field(max_length=INPUT_FIELDS_MAX),
            _rule(f"must be a list of at most {INPUT_FIELDS_MAX} input fields"),
        ]
    ]


@with_config(ConfigDict(extra="forbid", strict=True))
class ResumeInput(TypedDict, total=False):
    """The person's answer to a blocked step: a value per field it asked for."""

    input: Annotated[
        dict[str, str | bool],
        _rule("must be an object of field name to value (a string, or true/false)"),
    ]


@with_config(ConfigDict(extra="forbid", strict=True))
class Task(TypedDict):
    """One task inside a running step."""

    name: Annotated[str, Field(min_length=1, max_length=LABEL_MAX), _rule("must be a string")]
    status: Annotated[Literal[TASK_STATUSES], _rule(one_of(TASK_STATUSES))]
    note: NotRequired[
        Annotated[str, Field(max_length=PROGRESS_MESSAGE_MAX), _rule("must be a short string")]
    ]


@with_config(ConfigDict(extra="forbid", strict=True, json_schema_extra={"minProperties": 1}))
class ProgressReport(TypedDict, total=False):
    """A running step's report on itself, sent to its progress_url with its progress_token."""

    percent: Annotated[float, Field(ge=0, le=100), _rule("must be a number from 0 to 100")]
    message: Annotated[
        str,
        Field(max_length=PROGRESS_MESSAGE_MAX),
        _rule(f"must be a string of at most {PROGRESS_MESSAGE_MAX} characters"),
    ]
    tasks: Annotated[
        list[Task],
        Field(max_length=TASKS_MAX),
        _rule(f"must be a list of at most {TASKS_MAX} tasks"),
    ]
    progress_token: Annotated[str, _rule("must be the step call's progress token")]


@with_config(ConfigDict(extra="forbid"))
class ResumedResponse(TypedDict):
    """A blocked workflow got its input and runs again from the blocked step (202)."""

    success: Literal[True]
    message: Literal["Workflow resumed"]
    state: State


@with_config(ConfigDict(extra="forbid"))
class RetriedResponse(TypedDict):
    """A failed workflow runs again from its failed step (202)."""

    success: Literal[True]
    message: Literal["Workflow retried"]
    state: State


@with_config(ConfigDict(extra="forbid"))
class ProgressResponse(TypedDict):
    """A progress report was stored."""

    success: Literal[True]
    message: Literal["Progress saved"]
    version: Version


# Every body the document publishes, in the order it lists them.
BODIES: tuple[Any, ...] = (
    Error,
    StateInput,
    MergeInput,
    StepChange,
    State,
    StateResponse,
    SavedResponse,
    ClearedResponse,
    Summary,
    SummaryResponse,
    HistoryResponse,
    ConfigResponse,
    StateEvent,
    ActionResponse,
    Health,
    Ready,
    OpenAPIDocument,
    CreateWorkflowInput,
    WorkflowEntry,
    WorkflowList,
    WorkflowChange,
    WorkflowEvent,
    Run,
    RunStarted,
    Created,
    CancelledResponse,
    UserName,
    InputField,
    BlockedQuestion,
    ResumeInput,
    Task,
    ProgressReport,
    ResumedResponse,
    RetriedResponse,
    ProgressResponse,
)


class _Generator(GenerateJsonSchema):
    """Pydantic's JSON Schema, without a title on every field (the name says it)."""

    def field_title_should_be_set(self, schema: Any) -> bool:
        """Never title a field."""
        return False


def components() -> dict[str, Schema]:
    """Return the JSON Schema of every body, keyed by name, for components/schemas."""
    adapters = [(body, "validation", TypeAdapter(body)) for body in BODIES]
    _, definitions = TypeAdapter.json_schemas(
        adapters, ref_template=REF_TEMPLATE, schema_generator=_Generator
    )
    return definitions["$defs"]


# --- validation ------------------------------------------------------------------------------


class FieldError(ValueError):
    """A field breaks its rule; the message names the field and quotes the rule."""

    def __init__(self, field: str, rule: str) -> None:
        super().__init__(f"Invalid field '{field}': {rule}")
        self.field = field
        self.rule = rule


CONTAINERS = (dict, list)


def depth_exceeds(value: Any, limit: int) -> bool:
    """Tell whether a JSON value nests deeper than `limit`, without recursion."""
    if not isinstance(value, CONTAINERS):
        return False
    # One level at a time, only containers kept: most values are strings and numbers, and
    # this walk runs on every write (a tuple isinstance is also faster than `dict | list`).
    level = [value]
    for _ in range(limit):
        below = []
        for item in level:
            for child in item.values() if isinstance(item, dict) else item:
                if isinstance(child, CONTAINERS):
                    below.append(child)
        if not below:
            return False
        level = below
    return True


class Checker:
    """Validate plain dicts against one body type, naming the first broken field."""

    def __init__(self, body: Any) -> None:
        self.adapter = TypeAdapter(body)
        self.validate = self.adapter.validate_python

    @functools.cached_property
    def schema(self) -> Schema:
        """The JSON Schema the document publishes for the body; errors quote its descriptions."""
        # Built on the first refusal: most processes never need it.
        return self.adapter.json_schema(schema_generator=_Generator)

    def check(self, value: Any) -> None:
        """Raise FieldError unless `value` fits the body type."""
        try:
            self.validate(value)
        except ValidationError as error:
            first = error.errors(include_url=False, include_context=False, include_input=False)[0]
            raise self.field_error(first["loc"]) from None

    def _resolve(self, node: Schema) -> Schema:
        while "$ref" in node:
            node = self.schema["$defs"][node["$ref"].rsplit("/", 1)[-1]]
        return node

    def _rule(self, node: Schema) -> str:
        if "description" in node and "$ref" in node:
            return node["description"]
        target = self._resolve(node)
        if target.get("type") == "object":
            # An object type's description says what it is, not what it must be.
            return "must be an object"
        return target.get("description", "is not valid")

    def field_error(self, loc: tuple[int | str, ...]) -> FieldError:
        """Return the error for pydantic's error location `loc`: its path and its rule."""
        node, path, rule = self.schema, "", "must be an object"
        for part in loc:
            node = self._resolve(node)
            if isinstance(part, int) and "items" in node:
                node, path = node["items"], f"{path}[{part}]"
            elif isinstance(part, str) and part in node.get("properties", {}):
                node, path = node["properties"][part], f"{path}.{part}" if path else part
            else:
                break  # the tag of a union member (str, Sealed, ...): the field's rule applies
            rule = self._rule(node)
        return FieldError(path or "state", rule)


@with_config(ConfigDict(extra="allow", strict=True))
class _MergedState(MergeInput, total=False):
    """A stored state a client's PATCH changed: it may be blocked (the server set that)."""

    status: StoredStatus  # type: ignore[misc]
    steps: StoredSteps  # type: ignore[misc]


_STATE = Checker(StateInput)
_MERGED = Checker(_MergedState)
_STORED = Checker(StoredState)
_STEP_CHANGE = Checker(StepChange)
_BLOCKED = Checker(BlockedQuestion)
_RESUME = Checker(ResumeInput)
_PROGRESS = Checker(ProgressReport)


def check_blocked(question: Any) -> None:
    """Raise FieldError unless a step's `blocked` answer is a question the page can show."""
    _BLOCKED.check(question)
    names = [field["name"] for field in question.get("input", ())]
    if len(set(names)) != len(names):
        raise FieldError("input", "must name each field once")
    for position, field in enumerate(question.get("input", ())):
        if (field["type"] == "choice") != ("choices" in field):
            raise FieldError(f"input[{position}].choices", "must be given for a choice field only")


def check_resume(body: Any) -> None:
    """Raise FieldError unless a resume body has the shape of an answer."""
    _RESUME.check(body)


def check_progress(body: Any) -> None:
    """Raise FieldError unless a progress report satisfies its rules."""
    _PROGRESS.check(body)


def _check_shape(state: dict[str, Any]) -> None:
    steps = state.get("steps")
    if steps and state.get("current_step", 0) >= len(steps):
        raise FieldError("current_step", f"must be less than the number of steps ({len(steps)})")
    if depth_exceeds(state, MAX_DEPTH):
        raise FieldError("state", f"must not nest deeper than {MAX_DEPTH} levels")


def _check_written(state: dict[str, Any]) -> None:
    # Not on stored documents: one written before this rule stays readable.
    if not state.get("steps") and state.get("current_step", 0) != 0:
        raise FieldError("current_step", "must be 0 when there are no steps")
    _check_shape(state)


def check_state(state: dict[str, Any]) -> None:
    """Raise FieldError unless a new state (POST) satisfies every field rule."""
    _STATE.check(state)
    _check_written(state)


def check_merged(state: dict[str, Any]) -> None:
    """Raise FieldError unless a state a PATCH merged satisfies the POST rules (its id aside:
    it is the stored one)."""
    _MERGED.check(state)
    _check_written(state)


def check_stored(state: dict[str, Any]) -> None:
    """Raise FieldError unless a stored document is a whole state (server fields included)."""
    _STORED.check(state)
    _check_shape(state)


def check_step_data(data: Any) -> None:
    """Raise FieldError unless `data` may be stored as a step's data (steps[i].data)."""
    if depth_exceeds(data, MAX_DATA_DEPTH):
        raise FieldError("data", f"must not nest deeper than {MAX_DATA_DEPTH} levels")


def check_step_change(body: dict[str, Any]) -> None:
    """Raise FieldError unless a step PATCH body satisfies its rules."""
    _STEP_CHANGE.check(body)
    check_step_data(body.get("data"))


# --- parsing ---------------------------------------------------------------------------------


class NumberNotJson(ValueError):
    """A number JSON cannot carry: NaN, Infinity, or one past a double's range (1e999)."""


def _refuse_constant(name: str) -> Any:
    raise NumberNotJson(f"{name} is not a JSON number")


def _json_number(text: str) -> float | int:
    value = float(text)
    if not math.isfinite(value):
        raise NumberNotJson(f"{text[:20]} is out of range for a JSON number")
    # JSON has one kind of number: 2.0 is the integer 2, which an integer field accepts.
    return int(value) if value.is_integer() else value


def loads(data: bytes | str) -> Any:
    """Parse strict JSON, as every body (a client's, a step endpoint's answer) must be.

    NaN, Infinity and numbers that overflow (1e999) are refused: stored, they would be served
    as JSON no other client can read. Raise ValueError (NumberNotJson for those numbers).
    """
    try:
        return json.loads(data, parse_constant=_refuse_constant, parse_float=_json_number)
    except RecursionError:
        raise ValueError("nested too deep to parse") from None
