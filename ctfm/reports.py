"""What a long run did, item by item: one base for the reports of ``prepare``, ``embed`` and ``idc download|convert``.

A run over thousands of scans or series never stops for one bad item: it records the item with its
reason and goes on. Each report keeps its own lists (``prepared``, ``downloaded``, ...), which callers read; this base
turns them into rows of (item, status, reason), so every report has the same ``ok``, the same summary (a first line
that counts each status, then the reasons) and the same table, written atomically as CSV. It imports nothing heavy:
pandas only when a table is asked for, so a query or ``ctfm --help`` never pays for it.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, ClassVar

from ctfm.atomic import write_atomically

if TYPE_CHECKING:
    import pandas as pd

#: Reasons a summary lists under its first line before it says "... and K more".
MAX_REASONS = 10

#: Exit codes of every ``ctfm`` command (``ctfm --help`` and the README say the same).
EXIT_OK = 0  #: every item done
EXIT_FAILED = 1  #: nothing could be done, or a ctfm error stopped the run
EXIT_USAGE = 2  #: bad arguments (argparse's own code; ctfm's usage errors use it too)
EXIT_PARTIAL = 3  #: done, but some items were skipped or failed (named in the summary)
EXIT_CODES_HELP = f"""exit codes:
  {EXIT_OK}  every item done
  {EXIT_FAILED}  nothing could be done, or an error stopped the run (one line on stderr)
  {EXIT_USAGE}  usage error: a bad command line or flag value
  {EXIT_PARTIAL}  done, but some items were skipped or failed (named in the summary)"""


@dataclass(frozen=True)
class ReportRow:
    """One item of a run: what it is (a path, a SeriesInstanceUID), what happened to it, and why if it went wrong."""

    item: str
    status: str
    reason: str = ""


class RunReport:
    """Base of every run report: a subclass names its statuses and lists its rows, the rest is shared.

    ``STATUSES`` maps each status to the words that count it in the summary, in the order they are printed;
    ``PROBLEMS`` are the statuses that make a run not ``ok`` and whose reasons the summary lists; ``ITEM_COLUMN``
    heads the item column of the table (``image``, ``SeriesInstanceUID``, ...).
    """

    STATUSES: ClassVar[Mapping[str, str]] = {}
    PROBLEMS: ClassVar[frozenset[str]] = frozenset()
    ITEM_COLUMN: ClassVar[str] = "item"

    def rows(self) -> list[ReportRow]:
        """Every item of the run with its status, problems included."""
        raise NotImplementedError

    @property
    def problems(self) -> list[ReportRow]:
        """Items skipped or failed, each with its reason."""
        return [row for row in self.rows() if row.status in self.PROBLEMS]

    @property
    def done(self) -> list[ReportRow]:
        """Items that are usable after the run, whether this run did them or an earlier one."""
        return [row for row in self.rows() if row.status not in self.PROBLEMS]

    @property
    def ok(self) -> bool:
        """True when no item was skipped or failed."""
        return not self.problems

    @property
    def exit_code(self) -> int:
        """:data:`EXIT_OK` when every item was done, :data:`EXIT_PARTIAL` when some were skipped or failed,
        :data:`EXIT_FAILED` when none was done (an empty run included)."""
        if not self.done:
            return EXIT_FAILED
        return EXIT_OK if self.ok else EXIT_PARTIAL

    def counts(self) -> dict[str, int]:
        """Items per status, every status of ``STATUSES`` included (zeros too), in its order."""
        counts = dict.fromkeys(self.STATUSES, 0)
        for row in self.rows():
            counts[row.status] = counts.get(row.status, 0) + 1
        return counts

    def headline(self) -> str:
        """The summary's first line, e.g. ``2 prepared, 0 already cached, 1 skipped``; subclasses may add context."""
        return ", ".join(f"{count} {self.STATUSES.get(status, status)}" for status, count in self.counts().items())

    def summary(self, max_reasons: int = MAX_REASONS) -> str:
        """The headline, then ``  <status> <item>: <reason>`` for the first ``max_reasons`` problems."""
        problems = self.problems
        lines = [self.headline()]
        lines += [f"  {row.status} {row.item}: {row.reason}" for row in problems[:max_reasons]]
        if len(problems) > max_reasons:
            lines.append(f"  ... and {len(problems) - max_reasons} more")
        return "\n".join(lines)

    def to_frame(self, problems_only: bool = False) -> pd.DataFrame:
        """The rows as a table with columns ``ITEM_COLUMN``, ``status``, ``reason``."""
        import pandas as pd

        rows = self.problems if problems_only else self.rows()
        return pd.DataFrame(
            [(row.item, row.status, row.reason) for row in rows], columns=[self.ITEM_COLUMN, "status", "reason"]
        )

    def write_csv(self, path: str | os.PathLike, problems_only: bool = False) -> Path:
        """Write :meth:`to_frame` as CSV, atomically: a killed run never leaves half a report."""
        frame = self.to_frame(problems_only)
        return write_atomically(path, lambda tmp: frame.to_csv(tmp, index=False))
