"""What the outbox holds in memory while the disk refuses it: in order, de-duplicated by
(kind, incident_id, sequence) as the disk's UNIQUE is, and within the disk's limits (only
updates are evicted). Entries get negative ids, counting down, so they never meet a row id.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import replace

from agent.outbox.entries import EVICTABLE, Entry, Limits


class MemoryQueue:
    def __init__(self, limits: Limits) -> None:
        self.limits = limits
        self._entries: dict[int, Entry] = {}
        self._next_id = -1

    def __len__(self) -> int:
        return len(self._entries)

    def __iter__(self) -> Iterator[Entry]:
        """Oldest first."""
        return iter(sorted(self._entries.values(), key=lambda e: -e.id))

    def find(self, key: tuple[str, str, int]) -> Entry | None:
        for held in self._entries.values():
            if held.key == key:
                return held
        return None

    def hold(self, entry: Entry) -> Entry:
        """Keep ``entry`` (under a new negative id) and return it as held."""
        held = replace(entry, id=self._next_id)
        self._next_id -= 1
        self._entries[held.id] = held
        return held

    def remove(self, entry_id: int) -> None:
        self._entries.pop(entry_id, None)

    def remove_key(self, key: tuple[str, str, int]) -> None:
        held = self.find(key)
        if held is not None:
            del self._entries[held.id]

    def hold_first(self, entries: list[Entry]) -> None:
        """Put ``entries`` (oldest first) ahead of what is held, skipping keys already held."""
        later = list(self)
        self._entries.clear()
        for entry in [*entries, *later]:
            if self.find(entry.key) is None:
                self.hold(entry)

    def make_room(self, entry: Entry) -> tuple[str, int]:
        """Evict the oldest updates until ``entry`` fits: ("fits" | "over" | "refused", evicted).

        An update that does not fit is refused; a request or a cancel is kept anyway ("over").
        """
        size = sum(len(e.payload) for e in self._entries.values())
        evicted = 0
        while (
            len(self._entries) + 1 > self.limits.max_rows
            or size + len(entry.payload) > self.limits.max_bytes
        ):
            updates = [k for k, e in self._entries.items() if e.kind == EVICTABLE]
            if not updates:
                return ("refused" if entry.kind == EVICTABLE else "over"), evicted
            size -= len(self._entries.pop(max(updates)).payload)  # the oldest: ids count down
            evicted += 1
        return "fits", evicted
