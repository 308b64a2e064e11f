"""The synthetic world: deterministic per seed, tracks that match the drawn sprites, trajectory files."""

import json

import numpy as np
import pytest

from streamer.trajectory import Trajectory, from_json, from_wan_move, to_ati_json, to_wan_move
from streamer.world.scenes import World, colour_centroid, parse_prompt


def test_clip_is_deterministic_per_seed():
    w = World()
    a, b, c = w.clip(7, 21), w.clip(7, 21), w.clip(8, 21)
    assert np.array_equal(a.frames, b.frames) and a.prompt == b.prompt
    assert np.array_equal(a.trajectory.tracks, b.trajectory.tracks)
    assert not np.array_equal(a.frames, c.frames)
    assert a.frames.shape == (21, 128, 128, 3) and a.frames.dtype == np.uint8


def test_tracks_match_rendered_sprites():
    w = World()
    checked = 0
    for seed in range(12):
        clip = w.clip(seed, 33)
        tr, sprites = clip.trajectory, clip.scene.sprites
        for t in range(0, 33, 4):
            for n, s in enumerate(sprites):
                x, y = tr.tracks[t, n]
                r = s.radius * 1.3
                inside = r <= x <= 128 - r and r <= y <= 128 - r
                others = [tr.tracks[t, m] for m in range(len(sprites)) if m != n]
                apart = all(np.hypot(*(tr.tracks[t, n] - o)) > 3 * 11 for o in others)
                if not (inside and apart):
                    continue
                c = colour_centroid(clip.frames[t], s.rgb)
                assert c is not None, (seed, t, n)
                assert np.hypot(c[0] - x, c[1] - y) < 1.5, (seed, t, n, c, (x, y), s)
                checked += 1
    assert checked > 100


def test_prompt_names_sprites_in_track_order():
    clip = World().clip(3, 9)
    sprites, bg = parse_prompt(clip.prompt)
    assert sprites == [(s.colour, s.shape) for s in clip.scene.sprites]
    assert bg == clip.scene.background
    para = World().clip(3, 9, paraphrase=True).prompt
    assert [c for c, _ in parse_prompt(para)[0]] == [s.colour for s in clip.scene.sprites]


def test_motions_cover_stops_and_exits():
    w = World()
    speeds, hidden = [], 0
    for seed in range(40):
        tr = w.clip(seed, 121).trajectory
        speeds.append(np.linalg.norm(np.diff(tr.tracks, axis=0), axis=-1).ravel())
        hidden += int((~tr.visible).any())
    speeds = np.concatenate(speeds)
    assert (speeds < 1e-6).mean() > 0.02  # some sprites stop
    assert hidden > 0                      # some leave the frame


def test_trajectory_round_trips(tmp_path):
    tr = World().clip(5, 17).trajectory
    for name in ("t.npz", "t.json"):
        tr.save(tmp_path / name)
        back = Trajectory.load(tmp_path / name)
        assert np.allclose(back.tracks, tr.tracks, atol=1e-3) and np.array_equal(back.visible, tr.visible)
    to_wan_move(tr, tmp_path / "wm")
    assert np.load(tmp_path / "wm" / "tracks.npy").shape == (1, 17, tr.num_tracks, 2)
    back = from_wan_move(tmp_path / "wm", width=128, height=128)
    assert np.allclose(back.tracks, tr.tracks) and np.array_equal(back.visible, tr.visible)
    (tmp_path / "ati.json").write_text(json.dumps(to_ati_json(tr)))
    back = Trajectory.load(tmp_path / "ati.json")
    assert np.allclose(back.tracks, tr.tracks, atol=1e-3) and back.width == 128
    plain = from_json([[[10, 20], [11, 21]], [[30, 40], [31, 41]]])  # ATI: tracks of [x, y] points
    assert plain.tracks.shape == (2, 2, 2) and plain.tracks[1, 1, 0] == 31


@pytest.mark.parametrize("bad, message", [
    (dict(tracks=np.full((4, 1, 2), np.nan)), "NaN"),
    (dict(tracks=np.full((4, 1, 2), 5000.0)), "far outside"),
    (dict(tracks=np.zeros((4, 40, 2))), "too many tracks"),
    (dict(tracks=np.zeros((4, 2))), "shape"),
])
def test_trajectory_validation(bad, message):
    tracks = bad["tracks"]
    vis = np.ones(tracks.shape[:2], bool) if tracks.ndim == 3 else np.ones((4, 1), bool)
    with pytest.raises(ValueError, match=message):
        Trajectory(tracks, vis)


def test_malformed_files_raise_value_error(tmp_path):
    (tmp_path / "a.json").write_text("{not json")
    with pytest.raises(ValueError, match="not valid JSON"):
        Trajectory.load(tmp_path / "a.json")
    (tmp_path / "b.json").write_text(json.dumps([[[1, 2]], [[1, 2], [3, 4]]]))
    with pytest.raises(ValueError, match="same number of frames"):
        Trajectory.load(tmp_path / "b.json")
    for data, message in (({"tracks": "abc"}, r'"tracks" must be a non-empty list .*\(got a str\)'),
                          ({"track": []}, r'needs a "tracks" key \(it has: track\)'),
                          (5, r"ATI-style JSON must be a non-empty list .*\(got an int\)")):
        (tmp_path / "c.json").write_text(json.dumps(data))
        with pytest.raises(ValueError, match=message):
            Trajectory.load(tmp_path / "c.json")
    np.save(tmp_path / "tracks.npy", np.zeros((2, 5, 1, 2)))
    with pytest.raises(ValueError, match=r"\[1, F, N, 2\]"):
        Trajectory.load(tmp_path / "tracks.npy")


def test_looped_trajectory_repeats_from_the_start():
    t = np.arange(4, dtype=np.float32)
    traj = Trajectory(np.stack([t, 2 * t], 1)[:, None], np.array([[True], [True], [False], [True]]), fps=8,
                      width=32, height=32)
    loop = traj.looped(10)
    assert loop.num_frames == 10 and (loop.fps, loop.width, loop.height) == (8, 32, 32)
    assert np.array_equal(loop.tracks[:, 0, 0], [0, 1, 2, 3, 0, 1, 2, 3, 0, 1])
    assert np.array_equal(loop.visible[:, 0], [1, 1, 0, 1, 1, 1, 0, 1, 1, 1])
    assert np.array_equal(traj.looped(3).tracks, traj.tracks[:3])
    with pytest.raises(ValueError, match="at least one frame"):
        traj.looped(0)


def test_text_only_layout_spawns_at_fixed_points_and_bounces():
    """World.clip(spawn=True): the prompt's sprites start at the spawn points in prompt order, of the
    middle radius, and move the same way for every seed (one answer per prompt), drawn where the
    track says and always whole in view; the seed still picks background, shapes and colours."""
    from streamer.world.scenes import SPAWN_SPEED

    w = World()
    seeds = [s for s in range(40) if len(w.scene(s).sprites) == 2][:3]
    clips = [w.clip(s, 161, spawn=True) for s in seeds]
    for clip in clips:
        tr = clip.trajectory.tracks
        assert np.allclose(tr[0], w.spawn_points(2))
        assert np.array_equal(tr, clips[0].trajectory.tracks)  # the same motion whatever the seed
        assert [s.colour for s in clip.scene.sprites] == [s.colour for s in w.scene(clip.scene.seed).sprites]
        r = clip.scene.sprites[0].radius
        assert r == pytest.approx(9.0) and all(s.radius == r for s in clip.scene.sprites)
        assert ((tr >= r - 1e-4) & (tr <= 128 - r + 1e-4)).all()  # bounced, never cut by an edge
        step = np.linalg.norm(np.diff(tr, axis=0), axis=-1)
        assert np.median(step) == pytest.approx(SPAWN_SPEED, abs=1e-3)
        for t in (0, 80, 160):
            for n, s in enumerate(clip.scene.sprites):
                if np.linalg.norm(tr[t, n] - tr[t, 1 - n]) > 3 * r:
                    c = colour_centroid(clip.frames[t], s.rgb)
                    assert c is not None and np.hypot(c[0] - tr[t, n, 0], c[1] - tr[t, n, 1]) < 1.5
    assert np.allclose(w.spawn_points(1), [[64, 64]])
    assert len({c.scene.background for c in clips} | {c.prompt for c in clips}) > 2


def test_text_only_layout_can_start_elsewhere_with_the_same_motion():
    """World.clip(spawn=True, starts=...): the text-only clip continued from other start points (where
    a model drew its sprites): frame 0 is drawn there, and the sprites move as from the spawn points
    (same heading and speed) until a wall; starts need the text-only layout and one (x, y) per sprite."""
    w = World()
    seed = next(s for s in range(40) if len(w.scene(s).sprites) == 2)
    base = w.clip(seed, 9, spawn=True)
    starts = w.spawn_points(2) + np.array([[5.0, -3.0], [-4.0, 2.0]], np.float32)
    moved = w.clip(seed, 9, spawn=True, starts=starts)
    assert np.allclose(moved.trajectory.tracks[0], starts)
    assert np.allclose(np.diff(moved.trajectory.tracks, axis=0), np.diff(base.trajectory.tracks, axis=0), atol=1e-4)
    assert moved.prompt == base.prompt and np.array_equal(moved.background, base.background)
    for n, s in enumerate(moved.scene.sprites):
        c = colour_centroid(moved.frames[0], s.rgb)
        assert c is not None and np.hypot(c[0] - starts[n, 0], c[1] - starts[n, 1]) < 1.5
    with pytest.raises(ValueError, match="spawn=True"):
        w.clip(seed, 9, starts=starts)
    with pytest.raises(ValueError, match=r"\[2, 2\]"):
        w.clip(seed, 9, spawn=True, starts=starts[:1])


def test_clip_offset_is_a_later_stretch_of_the_same_motion():
    """World.clip(offset=k): frames k .. k + n of the seed's clip, tracks and pixels alike (a
    text-only clip later on, past its first bounce off a wall); a negative offset is an error."""
    w = World()
    seed = next(s for s in range(40) if len(w.scene(s).sprites) == 1)
    whole = w.clip(seed, 120, spawn=True)
    later = w.clip(seed, 40, spawn=True, offset=80)
    assert np.array_equal(later.trajectory.tracks, whole.trajectory.tracks[80:])
    assert np.array_equal(later.trajectory.visible, whole.trajectory.visible[80:])
    assert np.array_equal(later.frames, whole.frames[80:]) and later.prompt == whole.prompt
    velocity = np.diff(whole.trajectory.tracks[:, 0], axis=0)
    assert (np.sign(velocity[:40]) == np.sign(velocity[0])).all()  # the spawn clip's first 40 frames: no bounce
    assert (np.sign(velocity[79:]) != np.sign(velocity[0])).any()  # the later stretch has turned at a wall
    assert np.array_equal(w.clip(seed, 30, offset=5).frames, w.clip(seed, 35).frames[5:])  # any layout
    with pytest.raises(ValueError, match="offset"):
        w.clip(seed, 9, offset=-1)


def test_near_colours_draws_confusable_pairs_and_leaves_the_default_world_as_it_was():
    """near_colours = 1: every scene of two or more sprites holds a NEAR_COLOURS pair (where its
    background allows one); the default draws uniformly, about a quarter as often, and the held-out
    eval scenes keep their prompts (no extra random draw when it is 0)."""
    from streamer.world.evaluate import HELD_OUT_SEEDS, two_sprite_clips
    from streamer.world.scenes import NEAR_COLOURS, WorldConfig

    def has_pair(scene) -> bool:
        names = {sp.colour for sp in scene.sprites}
        return any(a in names and b in names for a, b in NEAR_COLOURS)

    near, plain = World(WorldConfig(near_colours=1.0)), World()
    multi = [s for s in range(2000) if len(plain.scene(s).sprites) >= 2]
    assert all(has_pair(near.scene(s)) for s in multi if len(near.scene(s).sprites) >= 2)
    assert 0.1 < np.mean([has_pair(plain.scene(s)) for s in multi]) < 0.5
    assert [plain.scene(s).prompt() for s in HELD_OUT_SEEDS[:2]] == [
        "an orange triangle on a night background", "a blue square and a yellow triangle on a snow background"]
    assert two_sprite_clips(plain, 2, 8)[1].prompt == "a red square and an orange triangle on a sand background"
    with pytest.raises(ValueError, match="near_colours"):
        WorldConfig(near_colours=1.5)


def test_background_weights_draw_the_named_backgrounds_more_often_and_refuse_bad_weights():
    """background_weights = {"sand": 2.5, "snow": 2.5}: sand and snow make 5/9 of the scenes (a third
    drawn uniformly); a weight of 0 never draws that background; the default world is as before
    (test_near_colours_... pins its held-out prompts). Unknown names and bad weights raise ValueError."""
    from streamer.world.scenes import BACKGROUNDS, WorldConfig

    light = World(WorldConfig(background_weights={"sand": 2.5, "snow": 2.5}))
    drawn = [light.scene(s).background for s in range(3000)]
    assert abs(np.mean([b in ("sand", "snow") for b in drawn]) - 5 / 9) < 0.03
    assert set(drawn) == set(BACKGROUNDS)
    no_night = World(WorldConfig(background_weights={"night": 0}))
    assert "night" not in {no_night.scene(s).background for s in range(600)}
    assert WorldConfig(background_weights={"sand": 3}).background_probabilities[0] == 3 / 8
    for bad in ({"mud": 1.0}, {"sand": -1.0}, {"sand": float("nan")}, {b: 0 for b in BACKGROUNDS}, [1, 2], {"sand": True}):
        with pytest.raises(ValueError, match="background_weights"):
            WorldConfig(background_weights=bad)
