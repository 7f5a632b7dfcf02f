"""What the Python client's end-to-end scripts (test_e2e.py, test_encrypted.py) check with."""

import latzero


def check(cond, what, detail=None):
    """Prints `ok WHAT`, or raises with the detail."""
    if not cond:
        raise AssertionError(f"{what}: {detail!r}")
    print(f"ok {what}", flush=True)


async def raises(coro):
    """The LatZeroError `coro` raises; an AssertionError if it raises none."""
    try:
        await coro
    except latzero.LatZeroError as e:
        return e
    raise AssertionError("expected a LatZeroError")
