"""Checksums of resume state, recorded when it is saved and compared before a resume reads it.

A file of a checkpoint or backup that is cut short or garbled later (a full disk, a broken copy,
a flipped bit) may still read without error: HDF5 and orbax's array files keep no checksums of
their values. The trainers record the sha256 of each file they will need right after saving
(jax_lora/checkpoint.py per checkpoint, tf_baseline/callbacks.py per backed-up epoch), in a
small JSON file written atomically, and compare before resuming: any change to a recorded file
is then found, and named, before anything is read. State saved before the record was written
(an older run, or a kill between the save and the record) is checked by reading it only.
"""

from __future__ import annotations

import json
from pathlib import Path

from shared.data.watson import file_sha256
from shared.runs.run_dir import atomic_write_text


def write_record(path: Path, files: dict[str, Path]) -> None:
    """{name: sha256 of the file} for `files`, as JSON at `path` (atomically)."""
    digests = {name: file_sha256(file) for name, file in sorted(files.items())}
    atomic_write_text(Path(path), json.dumps({"sha256": digests}, indent=1) + "\n")


def read_record(path: Path) -> dict[str, str] | None:
    """The recorded {name: sha256}; None when there is no record; ValueError (naming the file)
    when it cannot be read, which makes what it covers unverifiable."""
    path = Path(path)
    try:
        digests = json.loads(path.read_bytes())["sha256"]
        if not (isinstance(digests, dict) and all(isinstance(v, str) for v in digests.values())):
            raise ValueError("not a {name: sha256} table")
        return digests
    except FileNotFoundError:
        return None
    except (OSError, ValueError, KeyError, TypeError) as err:  # JSONDecodeError, UnicodeError
        raise ValueError(f"{path} (the checksum record) cannot be read ({type(err).__name__})"
                         ) from None


def mismatches(record: Path, recorded: dict[str, str], files: dict[str, Path],
               relative_to: Path | None = None) -> list[str]:
    """'PATH is missing' / 'PATH (N bytes) differs from its checksum in RECORD' for each of
    `files` (name in the record -> path) whose content is not what `record` holds (`recorded`,
    as read_record gave it); a name without a record counts as differing. Paths are shown
    relative to `relative_to` when given. Either file may be the damaged one: both are named."""
    def shown(path: Path) -> Path:
        return path.relative_to(relative_to) if relative_to is not None else path

    found = []
    for name, path in sorted(files.items()):
        if not path.is_file():
            found.append(f"{shown(path)} is missing")
        elif recorded.get(name) != file_sha256(path):
            found.append(f"{shown(path)} ({path.stat().st_size} bytes) differs from its "
                         f"checksum in {shown(Path(record))}")
    return found
