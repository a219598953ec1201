"""Shared behaviour of every report object: tidy rows, JSON round trips, a terminal table."""
from __future__ import annotations

import dataclasses
import json
from typing import Any, Sequence, TypeVar

from ._io import jsonable

R = TypeVar("R", bound="Report")


class Report:
    """Mixin for report dataclasses whose fields are plain JSON values (``rows`` first)."""

    rows: list[dict[str, Any]]

    def to_dict(self) -> dict[str, Any]:
        return json.loads(json.dumps(dataclasses.asdict(self), default=jsonable))

    def to_json(self, indent: int | None = 2) -> str:
        return json.dumps(self.to_dict(), indent=indent, default=jsonable)

    @classmethod
    def from_dict(cls: type[R], data: dict[str, Any]) -> R:
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in names})

    @classmethod
    def from_json(cls: type[R], text: str) -> R:
        return cls.from_dict(json.loads(text))

    def to_dataframe(self, part: str = "rows") -> Any:
        """One of the report's lists of plain dicts (``rows`` by default; e.g. ``"isolation"``
        of an ablation report) as a pandas DataFrame, one column per key."""
        import pandas as pd

        table = getattr(self, part, None)
        if not isinstance(table, list):
            parts = [f.name for f in dataclasses.fields(self)
                     if isinstance(getattr(self, f.name), list)]
            raise ValueError(f"{type(self).__name__} has no table {part!r}; its tables are {parts}")
        return pd.DataFrame.from_records(table)

    def table(self, columns: Sequence[str] | None = None, max_rows: int = 40) -> str:
        return format_table(self.rows, columns, max_rows)

    def __str__(self) -> str:
        return self.table()


def format_table(rows: Sequence[dict[str, Any]], columns: Sequence[str] | None = None,
                 max_rows: int = 40) -> str:
    """A fixed-width text table of ``rows`` for terminals (floats to 3 decimals)."""
    if not rows:
        return "(no rows)"
    columns = list(columns or rows[0].keys())

    def cell(v: Any) -> str:
        if isinstance(v, float):
            return f"{v:.3f}"
        return "" if v is None else str(v)

    body = [[cell(r.get(c)) for c in columns] for r in rows[:max_rows]]
    widths = [max(len(c), *(len(b[i]) for b in body)) for i, c in enumerate(columns)]
    lines = ["  ".join(c.ljust(w) for c, w in zip(columns, widths)),
             "  ".join("-" * w for w in widths)]
    lines += ["  ".join(v.ljust(w) for v, w in zip(b, widths)) for b in body]
    if len(rows) > max_rows:
        lines.append(f"... {len(rows) - max_rows} more rows")
    return "\n".join(lines)
