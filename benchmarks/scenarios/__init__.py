"""The scenarios of benchmarks/run.py, one module each.

Each module has `add_parser(add)`, which declares its subcommand(s) with
`add` (given by run.py: the options every scenario takes are already there)
and sets `run`, the coroutine function that measures and returns the RESULT.
A scenario imports the helpers (common, loadgen, hostile_load), never another
scenario and never run.py.
"""
