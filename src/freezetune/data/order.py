"""Which examples each micro-batch holds, and which process runs each of them.

The order must satisfy three things at once:

- it does not depend on the process count, so 2 processes see the global batches 1 would
  (same losses) and a run may resume with a different count;
- it is a pure function of the micro-batch index, so a resumed run sees exactly the batches
  the uninterrupted one would;
- under N processes every example always lands on the same process, so each process's prefix
  cache holds only its own shard (about 1/N of the data) however many epochs run.

Example i belongs to slot ``i % batch_size``. Each epoch shuffles every slot's examples, and
global batch p takes the p-th example of every slot, in slot order. A process takes an equal
run of slots, so its share of each batch comes from the same examples every epoch.
"""

from __future__ import annotations

import torch


class BatchOrder:
    def __init__(self, num_examples: int, batch_size: int, seed: int):
        if num_examples < batch_size:
            raise ValueError(f"{num_examples} examples are fewer than one batch of {batch_size}")
        self.batch_size = batch_size
        self.seed = seed
        self.slots = [list(range(slot, num_examples, batch_size)) for slot in range(batch_size)]
        # full batches only: every slot has at least this many examples, so every process gets its share
        self.batches_per_epoch = num_examples // batch_size
        self._epoch: tuple[int, list[list[int]]] = (-1, [])

    def _shuffled(self, epoch: int) -> list[list[int]]:
        if self._epoch[0] != epoch:  # one seeded shuffle per slot and epoch
            generator = torch.Generator().manual_seed(self.seed * 100_003 + epoch)
            self._epoch = (
                epoch,
                [
                    [slot[i] for i in torch.randperm(len(slot), generator=generator).tolist()]
                    for slot in self.slots
                ],
            )
        return self._epoch[1]

    def global_batch(self, index: int) -> list[int]:
        """Example indices of micro-batch ``index`` (counted from the start of training)."""
        epoch, position = divmod(index, self.batches_per_epoch)
        return [slot[position] for slot in self._shuffled(epoch)]

    def share(self, index: int, rank: int, world: int) -> list[int]:
        """The examples process ``rank`` of ``world`` runs in micro-batch ``index``."""
        width = self.batch_size // world
        return self.global_batch(index)[rank * width : (rank + 1) * width]

    def shard(self, rank: int, world: int) -> list[int]:
        """Every example process ``rank`` may ever run: its slots."""
        width = self.batch_size // world
        return sorted(i for slot in self.slots[rank * width : (rank + 1) * width] for i in slot)
