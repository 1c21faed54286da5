"""The suite's counters, in a module of their own: conftest.py may be imported under another name than
the tests use, and both must see one dict."""

TALLY = {"inputs tried": 0, "faults injected": 0, "records lost": 0, "tracebacks reaching the user": 0}


def count_traceback(text: str) -> None:
    """Add one to the tally for each Python traceback in a command's output."""
    TALLY["tracebacks reaching the user"] += text.count("Traceback (most recent call last)")
