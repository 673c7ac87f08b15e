"""CLI commands that are not pipeline steps (validate, run, compile, submit, schedule, katib)."""
