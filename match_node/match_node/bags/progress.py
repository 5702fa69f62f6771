"""Progress bars of the batch runner (bags/batch.py): one for all frames, one per running bag
(frames done, frames/s, ETA, from tqdm), and a line per finished bag. Nothing when quiet."""
from __future__ import annotations

import sys
from typing import Any, Iterable


class Bars:
    def __init__(self, plan: list, quiet: bool) -> None:
        self.quiet = quiet
        self.plan = plan
        self.bars: dict[int, Any] = {}
        self.total = None
        if quiet:
            return
        from tqdm import tqdm

        self._tqdm = tqdm
        frames = sum(b.frames for b in plan if b.state in ("pending", "running"))
        self.total = tqdm(total=frames, desc="all bags", unit="frame", position=0,
                          dynamic_ncols=True, file=sys.stderr)

    def _bar(self, bag) -> Any:
        key = id(bag)
        if key not in self.bars:
            self.bars[key] = self._tqdm(total=bag.frames, desc=bag.output.name[:30],
                                        unit="frame", leave=False, dynamic_ncols=True,
                                        file=sys.stderr)
        return self.bars[key]

    def update(self, snapshot: dict[str, int], inflight: Iterable) -> None:
        """`snapshot`: frames done per task key, as the workers reported them."""
        if self.quiet:
            return
        live: dict[int, int] = {}
        for _, task in inflight:
            live[task.bag] = live.get(task.bag, 0) + snapshot.get(task.key, 0)
        done = 0
        for index, bag in enumerate(self.plan):
            if bag.state == "done":
                done += bag.frames
            elif bag.state == "running":
                n = min(bag.frames, bag.done_frames + live.get(index, 0))
                done += n
                bar = self._bar(bag)
                bar.update(n - bar.n)
        self.total.update(min(done, self.total.total) - self.total.n)

    def note(self, bag, text: str) -> None:
        if not self.quiet:
            self._tqdm.write(f"[batch] {bag.input}: {text}", file=sys.stderr)

    def finish(self, bag) -> None:
        if self.quiet:
            return
        bar = self.bars.pop(id(bag), None)
        if bar is not None:
            bar.close()
        if bag.state == "done":
            self.total.update(0)
        self.note(bag, f"{bag.state} ({bag.messages} messages, {bag.retries} retries, "
                       f"{bag.wall_s:.1f} s)" + (f": {bag.error}" if bag.error else ""))

    def close(self) -> None:
        if self.quiet:
            return
        for bar in self.bars.values():
            bar.close()
        self.bars = {}
        self.total.close()
