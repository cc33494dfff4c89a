"""Documents that quote reports: every figure in RESULTS.md is its committed report.json's.

A block between `<!-- begin PATH -->` and `<!-- end PATH -->` in a Markdown document quotes
the file PATH (relative to the document's folder; its headings one level down, so that they nest
under the document's, and its relative links and images pointed at the same files from the
document's folder). The check holds when (1) each block equals its file, and (2) a quoted
study report.md (shared/evaluation/study_report.py) equals what its sibling report.json renders
to, so a hand edit of either the document or the report shows. (The evaluator's older
report.json files predate their renderer's current fields; their blocks are checked against
the report.md alone.)

    python -m shared.evaluation.quotes RESULTS.md            # check; exit 1 naming the block
    python -m shared.evaluation.quotes RESULTS.md --write    # refresh the blocks from the files
"""

from __future__ import annotations

import argparse
import json
import posixpath
import re
import sys
from pathlib import Path

from shared.evaluation import report, study_markdown

NOT_RUN = "(not run yet)"  # a block's text while the command that writes its file has not run
BLOCK = re.compile(r"<!-- begin (?P<path>\S+) -->\n(?P<body>.*?)\n?<!-- end (?P=path) -->",
                   re.DOTALL)


# A Markdown link or image target relative to its file: no scheme, not absolute, not an anchor.
RELATIVE_LINK = re.compile(r"\]\((?![a-z][a-z0-9+.-]*:|/|#)(?P<target>[^)\s]+)\)")


def quoted(markdown: str, folder: str = "") -> str:
    """A file's text as a document quotes it: headings one level down, links relative to the
    quoted file made relative to the document (`folder`: the file's folder from the
    document's), no trailing newline."""
    lines = ("#" + line if line.startswith("#") else line
             for line in markdown.strip("\n").splitlines())
    text = "\n".join(lines)
    if not folder:
        return text
    return RELATIVE_LINK.sub(lambda m: f"]({folder}/{m['target']})", text)


def replace_block(text: str, path: str, markdown: str) -> str:
    """`text` with the block quoting `path` holding `markdown`; unchanged without markers."""
    begin, end = f"<!-- begin {path} -->", f"<!-- end {path} -->"
    if begin not in text or end not in text:
        return text
    head, rest = text.split(begin, 1)
    block = quoted(markdown, posixpath.dirname(path))
    return f"{head}{begin}\n{block}\n{end}{rest.split(end, 1)[1]}"


def rendered(report_md: Path) -> str | None:
    """What the study report.json beside `report_md` renders to; None when there is none."""
    source = report_md.with_name(report.REPORT_JSON)
    if report_md.name != report.REPORT_MD or not source.is_file():
        return None
    result = json.loads(source.read_text())
    return study_markdown.render(result) if "study" in result else None


def problems(document: Path) -> list[str]:
    """One line per block that does not equal its file, or file its report.json."""
    found, root = [], document.parent
    for match in BLOCK.finditer(document.read_text()):
        path = root / match["path"]
        where = f"{document}: block {match['path']}"
        if not path.is_file() and match["body"].strip() == NOT_RUN:
            continue
        if not path.is_file():
            found.append(f"{where}: the file is missing; commit it or drop the block")
            continue
        if match["body"].strip("\n") != quoted(path.read_text(),
                                                 posixpath.dirname(match["path"])):
            found.append(f"{where}: differs from the file; run python -m "
                         f"shared.evaluation.quotes {document} --write")
        expected = rendered(path)
        if expected is not None and expected.strip("\n") != path.read_text().strip("\n"):
            found.append(f"{path}: differs from what {report.REPORT_JSON} beside it renders "
                         f"to; rebuild the report instead of editing it")
    return found


def write(document: Path) -> None:
    """Refresh every block from its file."""
    text, root = document.read_text(), document.parent
    for path in {match["path"] for match in BLOCK.finditer(text)}:
        if (root / path).is_file():
            text = replace_block(text, path, (root / path).read_text())
    document.write_text(text)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m shared.evaluation.quotes",
        description="Check (or with --write refresh) the report blocks a Markdown document "
                    "quotes between <!-- begin PATH --> and <!-- end PATH --> markers.")
    parser.add_argument("document", type=Path, help="e.g. RESULTS.md")
    parser.add_argument("--write", action="store_true",
                        help="replace each block with its file's current text")
    args = parser.parse_args(argv)
    if not args.document.is_file():
        parser.error(f"{args.document}: no such file")
    if args.write:
        write(args.document)
    found = problems(args.document)
    for line in found:
        print(f"error: {line}", file=sys.stderr)
    blocks = len(BLOCK.findall(args.document.read_text()))
    print(f"{args.document}: {blocks} quoted block(s), {len(found)} problem(s)")
    sys.exit(1 if found else 0)


if __name__ == "__main__":
    main()
