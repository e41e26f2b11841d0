"""What every command group shares: progress on the terminal, database error messages."""

from __future__ import annotations

import sys
from typing import IO

import click


class CliProgress:
    """Progress on stderr: a bar on a terminal, a line per tenth otherwise."""

    def __init__(
        self, label: str = "Importing", noun: str = "rows", stream: IO[str] | None = None
    ) -> None:
        self.label = label
        self.noun = noun
        self.stream = stream or sys.stderr
        self.interactive = bool(getattr(self.stream, "isatty", lambda: False)())
        self.bar: click.progressbar[int] | None = None  # type: ignore[type-arg]
        self.done = 0
        self.next_report = 0

    def __call__(self, done: int, total: int) -> None:
        """Called by the job after each batch."""
        if self.interactive:
            if self.bar is None:
                self.bar = click.progressbar(length=total, label=self.label, file=self.stream)
                self.bar.__enter__()
            self.bar.update(done - self.done)
            if done >= total:
                self.close()  # end the bar before the job logs its summary
        elif done >= self.next_report or done == total:
            click.echo(f"{self.label}: {done}/{total} {self.noun}", file=self.stream)
            self.next_report = done + max(total // 10, 1)
        self.done = done

    def close(self) -> None:
        """Finish the bar so the summary starts on a fresh line."""
        if self.bar is not None:
            self.bar.__exit__(None, None, None)
            self.bar = None


def database_problem(exc: Exception) -> str:
    """A one-paragraph explanation of a database error, with the usual fix."""
    detail = str(getattr(exc, "orig", None) or exc).strip().splitlines()[0]
    return (
        f"the database is not ready ({detail}). Create or update the schema with "
        "`flask --app wsgi db upgrade`."
    )
