"""A second implementation of the weighted mixture order, written from docs/LOADER.md
("Weighted mixtures") in plain Python. It prints the known answers that crates/load/tests/mix.rs
pins: `python3 crates/load/tests/mix_reference.py`.
"""

import math
import sys
from fractions import Fraction
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from order_reference import M, SplitMix64, permutation  # noqa: E402

GAMMA = 0x9E3779B97F4A7C15


def integer_weights(weights):
    """Each f64 weight scaled by the power of two that puts the largest in [2^31, 2^32), rounded
    to the nearest integer (halves up); a positive weight that rounds to 0 becomes 1."""
    top = max(weights)
    e = math.frexp(top)[1] - 1  # 2^e <= top < 2^(e+1)
    q = []
    for w in weights:
        x = math.floor(Fraction(w) * Fraction(2) ** (31 - e) + Fraction(1, 2))
        q.append(max(x, 1) if w > 0 else 0)
    return q


def assignments(q, count):
    """The source of mixture samples 0..count (Tijdeman's rule, in integers)."""
    W = sum(q)
    active = sum(1 for x in q if x > 0)
    m = max(2 * active - 2, 1)
    n = [0] * len(q)
    out = []
    for k in range(count):
        best = None
        for s, w in enumerate(q):
            if w == 0:
                continue
            e = (k + 1) * w - n[s] * W
            if m * e >= W:
                key = Fraction(m * (n[s] + 1) - 1, w)
                if best is None or key < best[0]:
                    best = (key, s)
        n[best[1]] += 1
        out.append(best[1])
    return out


def argmax_rule(q, count):
    """The rule Megatron's BlendedDataset uses: the largest (k + 1) q_s - n_s W, lowest s on a tie.
    Not the mixture's rule: shown for contrast, it can fall a sample or more behind."""
    W = sum(q)
    n = [0] * len(q)
    for k in range(count):
        s = max(range(len(q)), key=lambda s: ((k + 1) * q[s] - n[s] * W, -s))
        n[s] += 1
    return n


def source_seed(seed, s):
    return SplitMix64((seed + s * GAMMA) & M).next()


def mixture(sources, seed, count):
    """sources: (rows, weight, shuffle) per source. (source, row) of mixture samples 0..count."""
    q = integer_weights([w for _, w, _ in sources])
    seq = assignments(q, count)
    n = [0] * len(sources)
    perms = {}
    out = []
    for s in seq:
        rows, _, shuffle = sources[s]
        j = n[s]
        n[s] += 1
        ep = j // rows
        if (s, ep) not in perms:
            perms[(s, ep)] = permutation(rows, shuffle, source_seed(seed, s), ep)
        out.append((s, perms[(s, ep)][j % rows]))
    return out


def batches(sources, seed, batch_size, rank, world_size, epoch, samples_per_epoch=None):
    """Rank `rank`'s batches of mixture epoch `epoch`."""
    n = samples_per_epoch
    if n is None:
        n = sum(rows for rows, w, _ in sources if w > 0)
    g = batch_size * world_size
    per_epoch = n // g
    start = epoch * per_epoch * g
    seq = mixture(sources, seed, start + per_epoch * g)
    return [seq[start + b * g + rank * batch_size: start + b * g + (rank + 1) * batch_size]
            for b in range(per_epoch)]


if __name__ == "__main__":
    print("integer_weights([0.7, 0.3]):", integer_weights([0.7, 0.3]))
    print("assignments, weights 0.7/0.3, first 10:", assignments(integer_weights([0.7, 0.3]), 10))
    print("integer_weights([7, 3]):", integer_weights([7.0, 3.0]))
    print("assignments, weights 7/3, first 10:", assignments(integer_weights([7.0, 3.0]), 10))
    print("integer_weights([1, 0, 2]):", integer_weights([1.0, 0.0, 2.0]))
    print("assignments, weights 1/0/2, first 9:", assignments(integer_weights([1.0, 0.0, 2.0]), 9))
    print("integer_weights([0.5, 0.3, 0.2]):", integer_weights([0.5, 0.3, 0.2]))
    print("assignments, weights 0.5/0.3/0.2, first 20:",
          assignments(integer_weights([0.5, 0.3, 0.2]), 20))
    print("assignments, weights 1/1/1/1/1/1e-12, first 12:",
          assignments(integer_weights([1, 1, 1, 1, 1, 1e-12]), 12))
    q = [1, 1, 1, 11, 11]
    print("weights 1/1/1/11/11, counts after 16 samples: argmax rule", argmax_rule(q, 16),
          "this rule", [assignments(q, 16).count(s) for s in range(5)], "shares",
          [str(Fraction(16 * w, sum(q))) for w in q])
    print("assignments, weights 1/1/1/11/11, first 25:", assignments(q, 25))
    print("source_seed(0, 0..3):", [hex(source_seed(0, s)) for s in range(3)])
    srcs = [(5, 0.5, "full"), (3, 0.3, "none"), (4, 0.2, (2, 1))]
    for epoch in range(2):
        for rank in range(2):
            print(f"3 sources, seed 9, batches of 2, epoch {epoch}, rank {rank} of 2:",
                  batches(srcs, 9, 2, rank, 2, epoch))
    print("3 sources, seed 9, first 14 samples:", mixture(srcs, 9, 14))
