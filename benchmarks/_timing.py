"""One block of alternating calls, shared by the scripts that time two implementations against each other."""
import statistics
import time


def ratio(fused, other, rounds):
    """(median(other) / median(fused), median(fused)) over `rounds` calls of each, alternated with the order
    swapped every round, so that a noisy neighbour slows both alike."""
    tf, to = [], []
    for i in range(rounds):
        pair = ((fused, tf), (other, to)) if i % 2 == 0 else ((other, to), (fused, tf))
        for fn, out in pair:
            t0 = time.perf_counter()
            fn()
            out.append(time.perf_counter() - t0)
    return statistics.median(to) / statistics.median(tf), statistics.median(tf)
