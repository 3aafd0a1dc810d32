"""What one ingest did: ``IngestReport`` and its one-line summary."""

from __future__ import annotations

import shlex
from dataclasses import dataclass, field


@dataclass
class IngestReport:
    seen: int = 0
    new_images: int = 0
    updated_images: int = 0
    predictions: int = 0
    errors: int = 0
    duplicates: int = 0
    label_conflicts: int = 0  # duplicates whose label differs from the first file's
    unchanged: int = 0
    skipped: int = 0  # files not read: same path, size and mtime as their images row
    seconds: float = 0.0
    unknown_labels: list[str] = field(default_factory=list)
    models: list[str] = field(default_factory=list)
    store: str = ""

    @property
    def ok(self) -> int:
        return self.seen - self.errors

    def summary(self) -> str:
        read = self.seen - self.skipped
        rate = f" ({read / self.seconds:.1f} images/s)" if read and self.seconds > 0 else ""
        text = (
            f"ingested {self.seen} images in {self.seconds:.1f} s{rate}: "
            f"{self.new_images} new, {self.updated_images} updated, {self.unchanged} unchanged, "
            f"{self.duplicates} duplicates, {self.predictions} predictions, {self.errors} errors"
        )
        if self.label_conflicts:
            text += f" ({self.label_conflicts} duplicates with another label: see ingest_errors)"
        if self.skipped:
            text += f"; {_n(self.skipped, 'file')} unchanged since the last ingest, not read again"
        if self.errors:
            where = f"--store {shlex.quote(self.store)} " if self.store else ""
            text += (
                f"; {_n(self.errors, 'image')} could not be ingested: see the ingest_errors table "
                f'(failstore {where}sql "SELECT uri, reason FROM ingest_errors")'
            )
        return text


def _n(count: int, noun: str) -> str:
    return f"{count} {noun}" + ("" if count == 1 else "s")
