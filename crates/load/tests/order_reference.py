"""A second implementation of the epoch order, written from docs/LOADER.md in plain Python.

It prints the known answers that crates/load/tests/order.rs pins, so the Rust code and this
specification are checked against each other: `python3 crates/load/tests/order_reference.py`.
"""

M = (1 << 64) - 1


class SplitMix64:
    def __init__(self, state):
        self.x = state & M

    def next(self):
        self.x = (self.x + 0x9E3779B97F4A7C15) & M
        z = self.x
        z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & M
        z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & M
        return z ^ (z >> 31)


def rotl(x, k):
    return ((x << k) | (x >> (64 - k))) & M


class Rng:
    """xoshiro256** seeded for (seed, epoch)."""

    def __init__(self, seed, epoch):
        key = SplitMix64(seed).next() ^ epoch
        sm = SplitMix64(key)
        self.s = [sm.next() for _ in range(4)]

    def next(self):
        s = self.s
        result = (rotl((s[1] * 5) & M, 7) * 9) & M
        t = (s[1] << 17) & M
        s[2] ^= s[0]
        s[3] ^= s[1]
        s[1] ^= s[2]
        s[0] ^= s[3]
        s[2] ^= t
        s[3] = rotl(s[3], 45)
        return result

    def below(self, n):
        m = self.next() * n
        if (m & M) < n:
            t = ((1 << 64) - n) % n
            while (m & M) < t:
                m = self.next() * n
        return m >> 64

    def shuffle(self, a, lo=0):
        for i in range(len(a) - 1, lo, -1):
            j = lo + self.below(i - lo + 1)
            a[i], a[j] = a[j], a[i]


def permutation(rows, shuffle, seed, epoch):
    """shuffle is "none", "full" or (block_rows, window_blocks)."""
    rng = Rng(seed, epoch)
    p = list(range(rows))
    if shuffle == "full":
        rng.shuffle(p)
    elif shuffle != "none":
        block_rows, window_blocks = shuffle
        blocks = list(range(-(-rows // block_rows)))
        rng.shuffle(blocks)
        p = []
        for w in range(0, len(blocks), window_blocks):
            start = len(p)
            for b in blocks[w : w + window_blocks]:
                p.extend(range(b * block_rows, min(rows, (b + 1) * block_rows)))
            rng.shuffle(p, start)
    return p


def batches(rows, batch_size, shuffle, seed, epoch, rank, world_size, drop_last):
    p = permutation(rows, shuffle, seed, epoch)
    n = rows // world_size if drop_last and rows % world_size else -(-rows // world_size)
    q = [p[k % rows] for k in range(n * world_size)]
    s = q[rank::world_size]
    count = n // batch_size if drop_last else -(-n // batch_size)
    return [s[i * batch_size : (i + 1) * batch_size] for i in range(count)]


def resumed_batches(rows, batch_size, shuffle, seed, epoch, rank, world_size, drop_last, start):
    """Elastic resume: the rest of the epoch over `rows` rows from global position `start` (the
    entries of its permutation consumed by all ranks), on `world_size` ranks. The epoch's order
    continues cyclically from `start` (padding repeats the epoch's first entries), is cut to
    `n * world_size` entries, dealt out as a whole epoch is, and cut into batches. `start` 0 is
    `batches` above."""
    p = permutation(rows, shuffle, seed, epoch)
    left = rows - start
    n = left // world_size if drop_last and left % world_size else -(-left // world_size)
    q = [p[(start + k) % rows] for k in range(n * world_size)]
    s = q[rank::world_size]
    count = n // batch_size if drop_last else -(-n // batch_size)
    return [s[i * batch_size : (i + 1) * batch_size] for i in range(count)]


def position(rows, batch_size, world_size, start, batches_done):
    """The global position after `batches_done` batches of a run that started at `start`."""
    return min(start + batches_done * batch_size * world_size, rows)


def shard_ranks(shard_rows, world_size):
    """Whole shards per rank: each shard, in order, to the rank owning the fewest rows so far
    (the lowest such rank on a tie)."""
    non_empty = sum(1 for r in shard_rows if r > 0)
    if 0 < non_empty < world_size:
        raise ValueError("too few shards")
    if non_empty == 0:
        return [0] * len(shard_rows)
    owned = [0] * world_size
    ranks = []
    for rows in shard_rows:
        rank = min(range(world_size), key=lambda r: (owned[r], r))
        ranks.append(rank)
        owned[rank] += rows
    return ranks


def shard_batches(shard_rows, batch_size, shuffle, seed, epoch, rank, world_size, drop_last):
    ranks = shard_ranks(shard_rows, world_size)
    owned = [0] * world_size
    mine, start = [], 0
    for rows, r in zip(shard_rows, ranks):
        owned[r] += rows
        if r == rank:
            mine.extend(range(start, start + rows))
        start += rows
    n = min(owned) if drop_last else max(owned)
    p = permutation(len(mine), shuffle, (seed + rank) & M, epoch)
    s = [mine[p[k % len(mine)]] for k in range(n)]
    count = n // batch_size if drop_last else -(-n // batch_size)
    return [s[i * batch_size : (i + 1) * batch_size] for i in range(count)]


if __name__ == "__main__":
    sm = SplitMix64(0)
    print("splitmix64(0):", [hex(sm.next()) for _ in range(3)])
    rng = Rng(0, 0)
    print("rng(0, 0):", [hex(rng.next()) for _ in range(4)])
    rng = Rng(0, 1)
    print("rng(0, 1):", [hex(rng.next()) for _ in range(2)])
    for seed, epoch in [(0, 0), (0, 1), (1, 0)]:
        print(f"full, 10 rows, ({seed}, {epoch}):", permutation(10, "full", seed, epoch))
    print("block (3, 2), 10 rows, (0, 0):", permutation(10, (3, 2), 0, 0))
    for rank in range(4):
        print(f"full, 10 rows, batches of 2, seed 9 epoch 3, rank {rank} of 4:",
              batches(10, 2, "full", 9, 3, rank, 4, False))
    # Elastic resume: 10 rows saved by 4 ranks after 1 batch of 2 (position 8), resumed on 3.
    at = position(10, 2, 4, 0, 1)
    print("full, 10 rows, batches of 2, seed 0 epoch 0, 4 ranks after 1 batch: position", at)
    for rank in range(3):
        print(f"  resumed at {at} on rank {rank} of 3:",
              resumed_batches(10, 2, "full", 0, 0, rank, 3, False, at))
    for rank in range(3):
        print(f"  resumed at {at} on rank {rank} of 3, drop_last:",
              resumed_batches(10, 2, "full", 0, 0, rank, 3, True, at))
    # 10 rows saved by 2 ranks after 1 batch of 2 (position 4), resumed on 4: 6 left, 2 padded.
    for rank in range(4):
        print(f"  10 rows at position 4 on rank {rank} of 4:",
              resumed_batches(10, 2, "full", 0, 0, rank, 4, False, 4))
    rng = Rng(0, 0)
    print("rng(0, 0).below(2**63 + 1) x 6 (rejects about half the draws):",
          [hex(rng.below(2**63 + 1)) for _ in range(6)], "then next():", hex(rng.next()))
    shards = [5, 3, 0, 4, 3]
    print("shard_ranks([5, 3, 0, 4, 3], 2):", shard_ranks(shards, 2))
    for drop_last in (False, True):
        for rank in range(2):
            print(f"shards {shards}, full, batches of 3, seed 9 epoch 3, rank {rank} of 2, "
                  f"drop_last={drop_last}:",
                  shard_batches(shards, 3, "full", 9, 3, rank, 2, drop_last))
    print(f"shards {shards}, block (2, 2), batches of 4, seed 1 epoch 0, rank 1 of 2:",
          shard_batches(shards, 4, (2, 2), 1, 0, 1, 2, False))
