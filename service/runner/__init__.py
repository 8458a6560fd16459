"""Server runs: performing steps, and (next) the engine that runs them.

`steps` performs one step and knows nothing of Flask, storage or the page; the rules a run's
writes follow are pure functions in `service.runs`. docs/runs.md explains leases and resumption.
"""
