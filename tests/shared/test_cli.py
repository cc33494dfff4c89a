"""shared/cli.py's pieces every entry point shares."""

import pytest

from shared.cli import error_line


@pytest.mark.parametrize("stderr, expected", [
    # Our commands end in one `error:` line: it wins over the warnings around it.
    ("warning: slow\nerror: --lr -1: must be > 0\nI0000 absl noise\n", "--lr -1: must be > 0"),
    # A traceback: the exception's line, not JAX's note about filtered frames after it.
    ("Traceback (most recent call last):\n  File \"x.py\", line 1\n"
     "jax.errors.TracerBoolConversionError: bool on a tracer\n----\n"
     "For simplicity, JAX has removed its internal frames\n",
     "jax.errors.TracerBoolConversionError: bool on a tracer"),
    ("something odd happened\n", "something odd happened"),
    ("", "no message"),
])
def test_error_line_names_why_a_child_failed(stderr, expected):
    assert error_line(stderr) == expected
