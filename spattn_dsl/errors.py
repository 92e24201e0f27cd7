"""Source locations and the one error type users see."""
from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Source:
    """A pattern file's name and text, shared by every span that points into it."""

    filename: str
    text: str

    def line(self, number: int) -> str:
        lines = self.text.splitlines()
        return lines[number - 1] if 1 <= number <= len(lines) else ""


@dataclass(frozen=True)
class SourceSpan:
    """Where a construct starts (1-based line and column) and ends."""

    source: Source
    line: int
    column: int
    end_line: int | None = None
    end_column: int | None = None

    @property
    def filename(self) -> str:
        return self.source.filename

    def caret(self) -> str:
        """The source line and a caret under the span (a run of '^' on one line)."""
        text = self.source.line(self.line)
        width = 1
        if self.end_line == self.line and self.end_column and self.end_column > self.column:
            width = self.end_column - self.column
        pad = "".join("\t" if ch == "\t" else " " for ch in text[: self.column - 1])
        return f"{text}\n{pad}{'^' * width}"


class PatternError(ValueError):
    """A user error in a pattern: always located; ``str()`` starts ``file:line:col:``."""

    def __init__(self, message: str, span: SourceSpan | None = None, *,
                 filename: str = "<string>", line: int = 1, column: int = 1):
        self.message = message
        self.span = span
        self.filename = span.filename if span else filename
        self.line = span.line if span else line
        self.column = span.column if span else column
        super().__init__(f"{self.filename}:{self.line}:{self.column}: {message}")

    def render(self) -> str:
        """The compiler-style diagnostic: location line, source line and caret."""
        head = f"{self.filename}:{self.line}:{self.column}: error: {self.message}"
        return f"{head}\n{self.span.caret()}" if self.span else head
