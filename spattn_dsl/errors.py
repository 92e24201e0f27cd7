"""Source locations and the one error type users see."""
from __future__ import annotations

from dataclasses import dataclass

# Characters that end a line for str.splitlines() (or move the cursor) but not for the parser,
# which, like lark, counts lines by "\n" only. Shown as a space so the caret stays aligned.
_INVISIBLE = dict.fromkeys(map(ord, "\r\v\f\x1c\x1d\x1e\x85\u2028\u2029"), " ")


@dataclass(frozen=True)
class Source:
    """A pattern file's name and text, shared by every span that points into it."""

    filename: str
    text: str

    def line(self, number: int) -> str:
        """Line ``number`` (1-based) as the parser counts lines: split at "\\n" only."""
        lines = self.text.split("\n")
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
        text = self.source.line(self.line).translate(_INVISIBLE)
        width = 1
        if self.end_line == self.line and self.end_column and self.end_column > self.column:
            width = self.end_column - self.column
        pad = "".join("\t" if ch == "\t" else " " for ch in text[: self.column - 1])
        return f"{text}\n{pad}{'^' * width}"


class PatternError(ValueError):
    """A user error in a pattern: always located.

    ``str()`` is the full diagnostic, starting ``file:line:col: error:``, then the source line
    and a caret. An error that gathers several (``PatternError.combine``, as loading a file
    does) keeps them all in ``.errors`` (in source order); its own ``message``, ``filename``,
    ``line``, ``column`` and ``span`` are the first one's, and ``str()`` shows every one.
    A single error's ``.errors`` is ``[self]``.
    """

    def __init__(self, message: str, span: SourceSpan | None = None, *,
                 filename: str = "<string>", line: int = 1, column: int = 1):
        self.message = message
        self.span = span
        self.filename = span.filename if span else filename
        self.line = span.line if span else line
        self.column = span.column if span else column
        self.errors = [self]
        super().__init__(message)

    @classmethod
    def combine(cls, errors: list) -> "PatternError":
        """One error carrying ``errors`` (each a PatternError, possibly itself combined)."""
        flat = [e for error in errors for e in error.errors]
        if len(flat) == 1:
            return flat[0]
        first = flat[0]
        combined = cls(first.message, first.span, filename=first.filename, line=first.line,
                       column=first.column)
        combined.errors = flat
        return combined

    def render(self) -> str:
        """Every diagnostic: location line, source line and caret (one block per error)."""
        return "\n".join(e._render_one() for e in self.errors)

    def _render_one(self) -> str:
        head = f"{self.filename}:{self.line}:{self.column}: error: {self.message}"
        return f"{head}\n{self.span.caret()}" if self.span else head

    def __str__(self) -> str:
        return self.render()


class AnalysisError(ValueError):
    """No analysis method fits this pattern at this length (or it would not fit in time or
    memory): said up front, with the limit that was passed."""
