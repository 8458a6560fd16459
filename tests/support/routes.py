"""The service's routes as the tests name them: one place, so a route moves in one edit."""

STATE = "/workflow/state"
STREAM = "/workflow/state/stream"
WORKFLOWS = "/workflows"
