"""The data order: a function of the step alone, world-independent, and each process keeps its own examples."""

import pytest

from freezetune.data.order import BatchOrder


@pytest.mark.parametrize("num_examples, batch_size", [(37, 4), (40, 8), (8, 8), (101, 6)])
def test_an_epoch_is_full_batches_of_distinct_examples(num_examples, batch_size):
    order = BatchOrder(num_examples, batch_size, seed=3)
    assert order.batches_per_epoch == num_examples // batch_size
    for epoch in range(3):
        seen = [i for b in range(order.batches_per_epoch) for i in order.global_batch(epoch * order.batches_per_epoch + b)]
        assert len(seen) == len(set(seen)) == order.batches_per_epoch * batch_size
        assert set(seen) <= set(range(num_examples))


def test_epochs_are_reshuffled_and_the_order_is_reproducible():
    order, again = BatchOrder(64, 4, seed=0), BatchOrder(64, 4, seed=0)
    first = [order.global_batch(i) for i in range(16)]
    second = [order.global_batch(i) for i in range(16, 32)]
    assert first != second
    assert [again.global_batch(i) for i in range(16, 32)] == second  # no state carried from earlier epochs
    assert [BatchOrder(64, 4, seed=1).global_batch(i) for i in range(16)] != first


@pytest.mark.parametrize("world", [1, 2, 4])
def test_each_process_always_runs_its_own_shard(world):
    order = BatchOrder(50, 8, seed=5)
    shards = [set(order.shard(rank, world)) for rank in range(world)]
    assert set().union(*shards) == set(range(50)) and sum(map(len, shards)) == 50  # a partition
    assert max(map(len, shards)) - min(map(len, shards)) <= 8 // world
    for index in range(5 * order.batches_per_epoch):
        shares = [order.share(index, rank, world) for rank in range(world)]
        assert sum(shares, []) == order.global_batch(index)  # together: the same global batch for any world size
        for rank, share in enumerate(shares):
            assert len(share) == 8 // world and set(share) <= shards[rank]
