"""Float64 attention over the full history: the oracle of the decode tests."""
import torch

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"  # the kernels' device (else the interpreter)


def full_history(pattern, q, k, v, n: int, scale: float):
    """(out, lse) float64 for one sequence: ``q`` ``[heads, m, D]`` the queries at positions
    ``n - m .. n - 1``, ``k``/``v`` ``[kv_heads, >= n, D]`` every key so far."""
    q, k, v = q.cpu(), k.cpu(), v.cpu()
    heads, m = q.shape[:2]
    group = heads // k.shape[0]
    k = k[:, :n].double().repeat_interleave(group, 0)
    v = v[:, :n].double().repeat_interleave(group, 0)
    cases = [pattern.mask(m, n, head=c) for c in range(pattern.heads)]
    mask = torch.stack([cases[h % pattern.heads] for h in range(heads)])
    s = (q.double() @ k.transpose(-1, -2)) * scale
    s = s.masked_fill(~mask, float("-inf"))
    lse = torch.logsumexp(s, -1)
    return torch.softmax(s, -1).nan_to_num(0.0) @ v, lse


def append(cache, ks, vs, lengths, counts):
    """Append each sequence's next counts[b] positions of ``ks``/``vs`` (``[B, KVH, n, D]``),
    left-padded to one width; returns the new lengths."""
    m = max(counts)
    k, v = (ks.new_zeros(ks.shape[0], ks.shape[1], m, ks.shape[-1]) for _ in range(2))
    for b, c in enumerate(counts):
        k[b, :, m - c:] = ks[b, :, lengths[b]:lengths[b] + c]
        v[b, :, m - c:] = vs[b, :, lengths[b]:lengths[b] + c]
    cache.append(k, v, counts=counts)
    return [n + c for n, c in zip(lengths, counts)]
