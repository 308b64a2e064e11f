"""Cache policies: hand-worked expectations, Self-Forcing's own cache as reference, bounded streams."""

import pytest
import torch

from streamer.cache import CacheView, KVCache
from streamer.models.rope import apply_rope, rope_cos_sin
from streamer.policies import BOUNDED_POLICIES, POLICIES, PolicyError, make_policy, ping_pong
from streamer.sampler import SamplerConfig, denoise


def _cache(policy, chunk=3, tpf=1, heads=1, head_dim=8, layers=1):
    return KVCache(layers, policy.num_slots(chunk), tpf, heads, head_dim, store_queries=policy.needs_queries,
                   compressed_tokens=policy.compressed_tokens(tpf))


def _run_plans(policy, n_chunks, chunk=3, cache=None, fill=None):
    """Plan n_chunks in a row (committing each by writing `fill(frame)` values); returns the plans."""
    cache = cache or _cache(policy, chunk)
    plans = []
    for c in range(n_chunks):
        frames = list(range(c * chunk, (c + 1) * chunk))
        plan = policy.plan(cache, frames)
        plan.seen = [cache.slot_frame[s] for s in plan.history_slots]  # slots are reused later
        if fill is not None:
            tpf, heads, dim = cache.k.shape[-3:]
            kv = torch.cat([torch.full((1, tpf, heads, dim), float(fill(f))) for f in frames], dim=1)
            for layer in range(cache.num_layers):
                cache.write(layer, plan.write_slots, kv, kv)
        policy.after_commit(cache, plan)
        plans.append(plan)
    return cache, plans


def _seen(cache, plan):
    return getattr(plan, "seen", None) or [cache.slot_frame[s] for s in plan.history_slots]


def test_window_keeps_last_frames_with_absolute_positions():
    policy = make_policy("window", {"window": 6})
    cache, plans = _run_plans(policy, 4)
    assert [p.history_positions for p in plans] == [[], [0, 1, 2], [3, 4, 5], [6, 7, 8]]
    assert [p.positions for p in plans][-1] == [9, 10, 11]
    assert _seen(cache, plans[-1]) == [6, 7, 8]


def test_frame_sink_absolute_and_slot():
    policy = make_policy("frame-sink")  # LongLive: sink 3 + 9 recent = 12 with the chunk
    cache, plans = _run_plans(policy, 6)
    last = plans[-1]
    assert _seen(cache, last) == [0, 1, 2, 9, 10, 11, 12, 13, 14]
    assert last.history_positions == [0, 1, 2, 9, 10, 11, 12, 13, 14] and last.positions == [15, 16, 17]
    assert last.history_kinds == ["sink"] * 3 + ["window"] * 6
    cache, plans = _run_plans(make_policy("frame-sink", {"positions": "slot"}), 6)
    assert plans[-1].history_positions == list(range(9)) and plans[-1].positions == [9, 10, 11]


def test_deep_sink_realigns_sinks_right_before_the_tail():
    cache, plans = _run_plans(make_policy("deep-sink"), 11)  # S=10 of 21
    last = plans[-1]  # frames 30..32
    assert _seen(cache, last) == list(range(10)) + list(range(22, 30))
    tail_start = last.history_positions[10]
    assert last.history_positions[:10] == [tail_start - 10 + i for i in range(10)]
    assert last.history_positions[10:] == [tail_start + i for i in range(8)]
    assert last.positions == [tail_start + 8 + i for i in range(3)]


def test_ema_sink_folds_evicted_frames_into_the_sink():
    policy = make_policy("ema-sink", {"alpha": 0.5})  # sink 3 + 6, alpha 0.5 to work by hand
    cache, plans = _run_plans(policy, 5, fill=lambda f: f)
    # chunk 3 evicted frames 3,4,5 into sinks 0,1,2; chunk 4 evicted 6,7,8
    expected = [0.5 * (0.5 * 0 + 0.5 * 3) + 0.5 * 6, 0.5 * (0.5 * 1 + 0.5 * 4) + 0.5 * 7,
                0.5 * (0.5 * 2 + 0.5 * 5) + 0.5 * 8]
    sink_slots = plans[-1].history_slots[:3]
    assert _seen(cache, plans[-1]) == [0, 1, 2, 9, 10, 11]
    for slot, value in zip(sink_slots, expected):
        assert torch.allclose(cache.k[0, 0, slot], torch.tensor(value)) and torch.allclose(cache.v[0, 0, slot], torch.tensor(value))
    assert plans[-1].history_positions == [0, 1, 2, 3, 4, 5] and plans[-1].positions == [6, 7, 8]
    # the released alpha barely moves the sink
    cache, plans = _run_plans(make_policy("ema-sink"), 4, fill=lambda f: f)
    assert torch.allclose(cache.k[0, 0, plans[-1].history_slots[0]], torch.tensor(0.999 * 0 + 0.001 * 3))


def test_rolling_sink_replays_the_first_blocks_in_ping_pong():
    assert [ping_pong(n, 6) for n in range(12)] == [0, 1, 2, 3, 4, 5, 4, 3, 2, 1, 0, 1]
    policy = make_policy("rolling-sink", chunk=1)  # blocks of one frame, to read the order directly
    cache, plans = _run_plans(policy, 14, chunk=1)
    assert _seen(cache, plans[6]) == [0, 1, 2, 3, 4, 5]  # inside the kept prefix: everything
    assert _seen(cache, plans[7]) == [1, 2, 3, 4, 5, 6]
    assert _seen(cache, plans[8]) == [2, 3, 4, 5, 4, 7]
    assert _seen(cache, plans[9]) == [3, 4, 5, 4, 3, 8]
    assert _seen(cache, plans[12]) == [4, 3, 2, 1, 0, 11]
    assert _seen(cache, plans[13]) == [3, 2, 1, 0, 1, 12]
    assert plans[13].history_positions == [0, 1, 2, 3, 4, 5] and plans[13].positions == [6]
    assert plans[13].history_kinds == ["sink"] * 5 + ["window"]
    assert len(cache.frames()) <= policy.num_slots(1)


def test_participative_compression_keeps_the_most_attended_tokens():
    # one layer, 4 tokens per frame (grid 2x2), head_dim 8 (temporal band = channels 0..3)
    policy = make_policy("window", {"compress": True, "sink": 1, "recent": 1, "budget": 3}, chunk=1)
    cache = KVCache(1, policy.num_slots(1), 4, 1, 8, store_queries=True, compressed_tokens=policy.compressed_tokens(4))
    direction = torch.zeros(8)
    direction[5] = 1.0  # a spatial-band channel: no temporal rotation touches it
    targets = {(1, 0), (1, 3), (2, 1), (2, 2)}  # (frame, token) pairs the queries point at

    def commit(plan):
        for f, slot in zip(plan.frames, plan.write_slots):
            k = torch.stack([direction * (5.0 if (f, t) in targets else -1.0) for t in range(4)])
            cache.k[0, 0, slot, :, 0] = k
            cache.v[0, 0, slot, :, 0] = f
            cache.q[0, 0, slot, :, 0] = direction
        policy.after_commit(cache, plan)

    for f in range(4):
        plan = policy.plan(cache, [f])
        assert plan.compression is None
        commit(plan)
    plan = policy.plan(cache, [4])  # history 0..3 = 4 frames > budget 3: compress frames 1, 2
    assert plan.compression is not None
    assert [cache.slot_frame[s] for s in plan.compression.candidate_slots] == [1, 2]
    assert [cache.slot_frame[s] for s in plan.compression.query_slots] == [3]
    assert _seen(cache, plan) == [0, 3]
    view = CacheView(cache, plan, (2, 2), 8, 10000.0)
    q = torch.zeros(1, 4, 1, 8)  # the chunk's own queries carry no preference
    view(0, q, torch.randn(1, 4, 1, 8), torch.randn(1, 4, 1, 8))
    assert cache.c_count == 4
    assert cache.c_frame[0].tolist() == [1.0, 1.0, 2.0, 2.0]  # temporal order kept
    assert torch.all(cache.ck[0, 0, :, 0, 5] == 5.0)  # exactly the target tokens
    assert view.history(0, q).num_tokens == 2 * 4 + 4  # sink + recent frames + compressed tokens
    commit(plan)
    assert len(cache.frames()) == 3  # candidates freed: sink 0, recent 3, new 4


def test_sink_shift_moves_only_the_sinks_back():
    # the shipped model's layout: sink 3 + 3 recent + the chunk; a gap of 6 puts the sinks 6
    # positions further from everything after them, chunk after chunk, and changes nothing else
    plain = _run_plans(make_policy("deep-sink", {"window": 9, "sink": 3}), 6)[1]
    gapped = _run_plans(make_policy("deep-sink", {"window": 9, "sink": 3, "sink_shift": 6}), 6)[1]
    assert plain[-1].history_positions == [0, 1, 2, 3, 4, 5] and plain[-1].positions == [6, 7, 8]
    assert gapped[-1].history_positions == [0, 1, 2, 9, 10, 11] and gapped[-1].positions == [12, 13, 14]
    assert gapped[0].positions == [0, 1, 2]  # the first chunk has no sinks yet: nothing to move
    assert gapped[1].history_positions == [0, 1, 2] and gapped[1].positions == [9, 10, 11]
    for a, b in zip(plain, gapped):  # the same frames in the same slots
        assert a.seen == b.seen and a.write_slots == b.write_slots
        assert [p + 6 * bool(a.history_positions) for p in a.positions] == b.positions


@pytest.mark.parametrize("name,knobs", [("deep-sink", {}),  # sink 10 of 21: the sink fills over 4 chunks
                                        ("deep-forcing", {"sink": 3, "budget": 10, "recent": 3}),
                                        ("ema-sink", {}), ("frame-sink", {"positions": "slot"})])
def test_sink_shift_moves_the_sinks_back_once_they_are_held(name, knobs):
    shift = 4
    plain = _run_plans(make_policy(name, knobs), 9)[1]
    shifted_policy = make_policy(name, {**knobs, "sink_shift": shift})
    shifted = _run_plans(shifted_policy, 9)[1]
    n_sink, moved = shifted_policy.sink, 0
    for a, b in zip(plain, shifted):
        assert a.seen == b.seen and a.write_slots == b.write_slots and a.compressed_span == b.compressed_span
        full = sum(f < n_sink for f in a.seen) == n_sink  # every sink frame held
        d = shift if full else 0
        assert b.history_positions[:n_sink] == a.history_positions[:n_sink]
        assert b.history_positions[n_sink:] == [p + d for p in a.history_positions[n_sink:]]
        assert b.positions == [p + d for p in a.positions]
        assert b.compressed_start == a.compressed_start + d
        moved += full
    assert moved >= 4  # the shifted layout was reached, not only the filling chunks
    if name == "deep-sink":  # while the 10-frame sink fills, the chunks stay next to their history
        assert shifted[3].history_positions == list(range(9)) and shifted[3].positions == [9, 10, 11]
        assert shifted[4].history_positions == list(range(10)) + [14, 15] and shifted[4].positions == [16, 17, 18]
    if name == "deep-forcing":
        assert any(p.compression is not None for p in shifted)  # the compressed path ran


@pytest.mark.parametrize("knobs,match", [({"sink_shift": "-1"}, "sink_shift=-1 must be >= 0"),
                                         ({"sink_shift": "6", "positions": "absolute"},
                                          "positions='slot' and sink >= 1, not positions='absolute', sink=10"),
                                         ({"sink_shift": "6", "sink": "0"}, "not positions='slot', sink=0")])
def test_bad_sink_shift_is_refused(knobs, match):
    with pytest.raises(PolicyError, match=match):
        make_policy("deep-sink", knobs)


@pytest.mark.parametrize("name,knobs", [("deep-sink", {"window": 9, "sink": 3}), ("deep-forcing", {}),
                                        ("ema-sink", {})])
def test_untracked_positions_switch_the_layout_chunk_by_chunk(name, knobs):
    """untracked_positions=absolute holds the policy's frames in its slots at every chunk; a chunk
    without tracks is placed as the same policy at absolute positions places it (for deep-sink 9/3,
    `frame-sink` 9/3), a tracked chunk at the policy's slot positions, whatever came before. The
    compressed path (deep-forcing) and the EMA sink (ema-sink) included."""
    mixed = make_policy(name, {**knobs, "untracked_positions": "absolute"})
    slot, absolute = make_policy(name, knobs), make_policy(name, {**knobs, "positions": "absolute"})
    caches = [_cache(p) for p in (mixed, slot, absolute)]
    differ = compressed = 0
    flags = [False, False, True, True, False, True, False, False, True, False, True, True, False]
    for c, tracked in enumerate(flags):
        frames = list(range(3 * c, 3 * c + 3))
        got = mixed.plan(caches[0], frames, tracked)
        want_slot, want_abs = slot.plan(caches[1], frames, tracked), absolute.plan(caches[2], frames, tracked)
        want = want_slot if tracked else want_abs
        for key in ("frames", "positions", "history_slots", "history_positions", "write_slots", "history_kinds",
                    "compressed_start", "compressed_span"):
            assert getattr(got, key) == getattr(want, key), (c, key)
        assert _seen(caches[0], got) == _seen(caches[1], want_slot) == _seen(caches[2], want_abs)
        for policy, cache, plan in zip((mixed, slot, absolute), caches, (got, want_slot, want_abs)):
            policy.after_commit(cache, plan)
        differ += want_slot.history_positions != want_abs.history_positions
        compressed += got.compression is not None
    assert differ >= 4  # past the first evictions the two layouts place the history apart: the test can tell
    assert (compressed > 0) == (name == "deep-forcing")


def test_tracked_flag_changes_nothing_without_untracked_positions():
    for name in ("deep-sink", "frame-sink", "window"):
        a, b = make_policy(name), make_policy(name)
        ca, cb = _cache(a), _cache(b)
        for c in range(9):
            frames = list(range(3 * c, 3 * c + 3))
            pa, pb = a.plan(ca, frames, True), b.plan(cb, frames, False)
            assert (pa.positions, pa.history_positions, pa.history_slots) == (pb.positions, pb.history_positions,
                                                                              pb.history_slots)


def test_bad_untracked_positions_are_refused():
    with pytest.raises(PolicyError, match="untracked_positions must be 'absolute', 'slot' or ''.*not 'rope'"):
        make_policy("deep-sink", {"untracked_positions": "rope"})


def test_deep_sink_realignment_equals_rotating_stored_sink_keys():
    torch.manual_seed(0)
    grid, hd, tpf = (2, 2), 24, 4
    ds = make_policy("deep-sink", {"window": 9, "sink": 3})
    ab = make_policy("frame-sink", {"window": 9, "sink": 3})  # same frames, absolute positions
    caches = [KVCache(1, 9, tpf, 2, hd), KVCache(1, 9, tpf, 2, hd)]
    for c in range(5):
        frames = list(range(c * 3, c * 3 + 3))
        plans = [ds.plan(caches[0], frames), ab.plan(caches[1], frames)]
        k, v = torch.randn(1, 3 * tpf, 2, hd), torch.randn(1, 3 * tpf, 2, hd)
        for cache, plan in zip(caches, plans):
            cache.write(0, plan.write_slots, k, v)
    frames = [15, 16, 17]
    p_ds, p_ab = ds.plan(caches[0], frames), ab.plan(caches[1], frames)
    assert p_ab.history_positions[:3] == [0, 1, 2] and p_ab.history_positions[3] == 12.0
    delta = p_ab.history_positions[3] - 3  # absolute tail start minus sink size
    cos, sin = rope_cos_sin(torch.full((3,), float(delta)), *grid, hd, spatial=False)
    sink_slots = torch.tensor(p_ab.history_slots[:3])
    rotated = apply_rope(caches[1].k[0].index_select(1, sink_slots).flatten(1, 2), cos, sin)
    caches[1].k[0, :, sink_slots] = rotated.unflatten(1, (3, tpf))
    q, k, v = torch.randn(1, 3 * tpf, 2, hd), torch.randn(1, 3 * tpf, 2, hd), torch.randn(1, 3 * tpf, 2, hd)
    out_ds = CacheView(caches[0], p_ds, grid, hd, 10000.0)(0, q, k, v)
    out_ab = CacheView(caches[1], p_ab, grid, hd, 10000.0)(0, q, k, v)
    torch.testing.assert_close(out_ds, out_ab, atol=1e-5, rtol=1e-5)


class SelfForcingCacheView:
    """Self-Forcing's own KV cache (CausalWanSelfAttention with kv_cache), token for token: keys
    roped with absolute frame positions, a rolling buffer with sink tokens kept at the front,
    eviction only when a chunk's first step overflows, the chunk overwriting its slots each step."""

    def __init__(self, layers, window, sink, tpf, grid, head_dim):
        self.size, self.sink_tokens, self.tpf = window * tpf, sink * tpf, tpf
        self.grid, self.head_dim = grid, head_dim
        self.kv = [None] * layers
        self.global_end = [0] * layers
        self.local_end = [0] * layers
        self.start_frame = 0

    def __call__(self, layer, q, k, v):
        n = q.shape[1]
        frames = torch.arange(self.start_frame, self.start_frame + n // self.tpf, dtype=torch.float64)
        cos, sin = rope_cos_sin(frames, *self.grid, self.head_dim)
        q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
        if self.kv[layer] is None:
            self.kv[layer] = (k.new_zeros(1, self.size, *k.shape[2:]), v.new_zeros(1, self.size, *v.shape[2:]))
        ck, cv = self.kv[layer]
        current_start = self.start_frame * self.tpf
        current_end = current_start + n
        if current_end > self.global_end[layer] and n + self.local_end[layer] > self.size:
            evicted = n + self.local_end[layer] - self.size
            rolled = self.local_end[layer] - evicted - self.sink_tokens
            s = self.sink_tokens
            ck[:, s:s + rolled] = ck[:, s + evicted:s + evicted + rolled].clone()
            cv[:, s:s + rolled] = cv[:, s + evicted:s + evicted + rolled].clone()
            local_end = self.local_end[layer] + current_end - self.global_end[layer] - evicted
        else:
            local_end = self.local_end[layer] + current_end - self.global_end[layer]
        ck[:, local_end - n:local_end], cv[:, local_end - n:local_end] = k, v
        lo = max(0, local_end - self.size)
        from streamer.kernels import attention
        out = attention(q, ck[:, lo:local_end], cv[:, lo:local_end])
        self.global_end[layer], self.local_end[layer] = current_end, local_end
        return out


@pytest.mark.parametrize("name,knobs", [("window", {"window": 6}), ("frame-sink", {"window": 9, "sink": 3})])
@torch.no_grad()
def test_matches_self_forcing_cache(tiny_model, name, knobs):
    from tests.test_streaming import _pipe
    from streamer.session import Session, StreamConfig

    chunk, n_chunks = 3, 5
    session = Session(_pipe(tiny_model), "p", StreamConfig(width=32, height=32, policy=name, policy_args=knobs, seed=3))
    ours = []
    for _ in range(n_chunks):
        session.step()
        last = sorted(session._latents)[-chunk:]
        ours.append(torch.cat([session._latents[f] for f in last], dim=2))
    # the same loop through Self-Forcing's cache
    text = tiny_model.encode_text(session.pipe.text_encoder.encode(["p"]))
    sf = SelfForcingCacheView(2, knobs["window"], knobs.get("sink", 0), 4, (2, 2), tiny_model.config.head_dim)
    g = torch.Generator().manual_seed(3)
    ts = SamplerConfig().timesteps()
    for c in range(n_chunks):
        sf.start_frame = c * chunk
        noise = torch.randn(1, 16, chunk, 4, 4, generator=g)
        flow = lambda x, t: tiny_model.forward_chunk(x, torch.full((1, chunk), t), text, sf).float()  # noqa: E731
        x0 = denoise(flow, noise, ts, g)
        tiny_model.forward_chunk(x0, torch.zeros(1, chunk), text, sf)
        torch.testing.assert_close(ours[c], x0, atol=1e-4, rtol=1e-4)


def test_bad_knobs_are_refused_with_the_valid_ones():
    with pytest.raises(PolicyError, match="choose one of: window, frame-sink, deep-sink, deep-forcing, ema-sink, rolling-sink"):
        make_policy("sliding")
    with pytest.raises(PolicyError, match=r"its knobs \(as set here, else their defaults\): window=21"):
        make_policy("window", {"size": "3"})
    # a model's own knobs arrive with the bad one: the list shows what the stream would have run
    with pytest.raises(PolicyError, match="window=9, sink=3, .*untracked_positions='absolute'"):
        make_policy("deep-sink", {"window": 9, "sink": 3, "untracked_positions": "absolute", "foo": "1"})
    with pytest.raises(PolicyError, match=r"no knob 'drift_anchor' \(drift_anchor is a stream setting: --drift-anchor\)"):
        make_policy("deep-sink", {"drift_anchor": "on"})
    with pytest.raises(PolicyError, match="knob compress='maybe' must be true or false"):
        make_policy("frame-sink", {"compress": "maybe"})
    with pytest.raises(PolicyError, match="window - chunk"):
        make_policy("frame-sink", {"sink": "10"})
    with pytest.raises(PolicyError, match="budget"):
        make_policy("deep-forcing", {"budget": "12"})  # 12 <= sink 10 + recent 4
    with pytest.raises(PolicyError, match="must be a whole number"):
        make_policy("window", {"window": "many"})
    assert set(POLICIES) == {"window", "frame-sink", "deep-sink", "deep-forcing", "ema-sink", "rolling-sink", "global"}


def _rss_mb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * 4096 / 2**20


# the most involved policy runs the full 2,000 latent frames (~8 minutes of video), the others 600
@pytest.mark.parametrize("name,n_frames", [(n, 2000 if n == "deep-forcing" else 600) for n in BOUNDED_POLICIES])
@torch.no_grad()
def test_streams_without_end_stay_bounded(tiny_model, name, n_frames):
    """Cache size, held frames and positions stay bounded (except `absolute` positions, which
    grow but stay exact since angles are computed in float64) and memory stays flat."""
    from tests.test_streaming import _pipe
    from streamer.session import Session, StreamConfig

    session = Session(_pipe(tiny_model), "p", StreamConfig(width=16, height=16, policy=name))
    session.record_attention = True
    nbytes, slots = session.cache.nbytes, session.cache.num_slots
    rss_mid = None
    max_pos = 0.0
    warm = n_frames // 6  # chunks: well after every window has filled
    for i, chunk in enumerate(session.stream(n_frames)):
        assert len(session.cache.frames()) <= slots
        assert chunk.attention_mass.shape == (2, len(chunk.plan.labels))
        torch.testing.assert_close(chunk.attention_mass.sum(-1), torch.ones(2))
        if i >= warm:
            max_pos = max(max_pos, *chunk.plan.positions)
        if i == warm:
            rss_mid = _rss_mb()
    assert session.cache.nbytes == nbytes
    assert len(session._latents) <= slots
    assert _rss_mb() - rss_mid < 16
    if getattr(session.policy, "positions", "slot") != "absolute":
        assert max_pos < 64
