"""A procedural video world: textured backgrounds and coloured sprites moving along trajectories.

It is the training data of the shipped default model and the ground truth of `streamer eval`.
Every clip is a pure function of its seed: a background (sand, grass, water, ...), one to a few
sprites (shape + colour, distinct colours so each can be found again by colour), and one motion
per sprite: smooth random paths, bounces off the walls, stops and starts, or crossings where the
sprite enters the frame, leaves it and comes back later. Each clip carries its tracks (sprite
centres, pixels), visibility (centre inside the frame) and a prompt describing the scene, in a
canonical form or a paraphrase (so the text encoder learns meanings, not one phrasing).

Track n always belongs to the n-th sprite named in the prompt: that is how a user's first path
binds to "a red circle" in "a red circle and a blue square ...".

A prompt alone (no tracks) has a fixed layout, the world's rule for text-only clips (`spawn=True`):
the sprites appear at spawn points (one: the centre; two: the left and right thirds of the middle
row; three: quarters), all of the middle radius, and bounce off the walls at a fixed speed and
heading (SPAWN_*). A few-step sampler cannot break the symmetry of "a red circle anywhere": its
first x0 prediction averages over every position and no sprite forms (measured: the shipped v2
model found the sprite in 0.7% of frames of 60-s text-only streams). With one answer per prompt
the first chunk is learnable, and a user knows where to start a drag.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field

import cv2
import numpy as np

from streamer.trajectory import Trajectory

COLOURS: dict[str, tuple[int, int, int]] = {  # RGB, saturated so a colour threshold finds them on any background
    "red": (225, 35, 35),
    "green": (40, 200, 60),
    "blue": (40, 80, 235),
    "yellow": (245, 225, 40),
    "purple": (150, 45, 205),
    "orange": (250, 135, 20),
    "white": (250, 250, 250),
}
SHAPES = ("circle", "square", "triangle", "diamond")
# name -> (base RGB, blotch amplitude, grain amplitude, stripes)
BACKGROUNDS: dict[str, tuple[tuple[int, int, int], float, float, bool]] = {
    "sand": ((200, 178, 128), 14.0, 7.0, False),
    "grass": ((70, 125, 55), 18.0, 9.0, False),
    "water": ((45, 95, 150), 10.0, 4.0, True),
    "snow": ((228, 231, 238), 6.0, 4.0, False),
    "stone": ((118, 118, 124), 22.0, 8.0, False),
    "night": ((22, 24, 52), 8.0, 4.0, False),
}
# colours that would vanish on a background (the colour finder needs contrast)
CLASHES = {("green", "grass"), ("blue", "water"), ("white", "snow"), ("purple", "night")}
# colour pairs within 130 RGB apart: the ones two sprites side by side confuse (a red square next to an
# orange triangle both turn reddish orange); `WorldConfig.near_colours` draws them more often
NEAR_COLOURS = (("yellow", "orange"), ("red", "orange"), ("blue", "purple"))
MOTIONS = ("smooth", "bounce", "stopstart", "cross")
# text-only clips (spawn=True): speed in px per frame at 128 px, and each sprite's heading in degrees
# (image y points down: 35 is right and down); not mirror images, so two sprites overlap in ~2% of frames
SPAWN_SPEED = 1.5
SPAWN_HEADINGS = (35.0, -110.0, 160.0)

SYNONYMS = {
    "circle": ["circle", "ball", "disc", "dot"],
    "square": ["square", "box", "block"],
    "triangle": ["triangle"],
    "diamond": ["diamond", "rhombus"],
    "sand": ["sand", "sandy", "desert", "beach sand"],
    "grass": ["grass", "lawn", "meadow", "green grass"],
    "water": ["water", "sea", "ocean", "blue water"],
    "snow": ["snow", "snowy", "white snow"],
    "stone": ["stone", "rock", "grey stone", "gray rock"],
    "night": ["night", "dark night", "night sky", "dark blue night"],
}
TEMPLATES = [
    "{sprites} on a {bg} background",
    "{sprites} moving over {bg}",
    "a {bg} background with {sprites}",
    "{sprites} on {bg}",
    "a video of {sprites} on a {bg} background",
    "{bg} scene: {sprites}",
]


@dataclass(frozen=True)
class WorldConfig:
    width: int = 128
    height: int = 128
    fps: float = 16.0
    max_sprites: int = 3
    radius: tuple[float, float] = (7.0, 11.0)     # sprite radius in px at 128 px (scales with the frame)
    speed: tuple[float, float] = (0.8, 3.2)       # px per frame at 128 px
    sprite_weights: tuple[float, ...] = (0.5, 0.35, 0.15)  # P(1, 2, 3 sprites)
    # P(each motion of MOTIONS) per sprite: smooth, bounce, stopstart, cross (leaves the frame)
    motion_weights: tuple[float, ...] = (0.35, 0.25, 0.25, 0.15)
    # P(a scene of two or more sprites gives two of them a NEAR_COLOURS pair, where the background
    # allows one); the other colours are drawn as usual. 0 (the default) draws colours uniformly and
    # leaves every seed's scene as it was (no extra random draw), so held-out scenes never change.
    near_colours: float = 0.0
    # relative weight of each named background (BACKGROUNDS' names; a background not named weighs 1),
    # e.g. {"sand": 2.5, "snow": 2.5}. None (the default) draws the background uniformly with the draw
    # every seed has always made, so held-out scenes never change; any mapping, even {} or all 1s, is
    # a weighted draw and gives other scenes (a training world, never the eval's).
    background_weights: dict[str, float] | None = None

    def __post_init__(self) -> None:
        w = self.motion_weights
        if len(w) != len(MOTIONS) or min(w) < 0 or sum(w) <= 0:
            raise ValueError(f"motion_weights must be {len(MOTIONS)} weights >= 0 ({', '.join(MOTIONS)}) "
                             f"with a positive sum, got {w!r}")
        if not 0.0 <= self.near_colours <= 1.0:
            raise ValueError(f"near_colours must be a probability in [0, 1], got {self.near_colours!r}")
        if self.background_weights is not None:
            bw = self.background_weights
            if not isinstance(bw, dict) or (unknown := sorted(set(bw) - set(BACKGROUNDS))):
                raise ValueError(f"background_weights must name backgrounds ({', '.join(BACKGROUNDS)}) with a "
                                 f"weight each, got {bw!r}")
            if not all(isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) and v >= 0
                       for v in bw.values()) \
                    or sum(self.background_probabilities) <= 0:
                raise ValueError(f"background_weights must be finite weights >= 0 with a positive sum, got {bw!r}")

    @property
    def background_probabilities(self) -> list[float]:
        """P(each background of BACKGROUNDS, in its order) a scene draws."""
        w = [float((self.background_weights or {}).get(b, 1.0)) for b in BACKGROUNDS]
        return [x / sum(w) for x in w] if sum(w) > 0 else w

    @property
    def scale(self) -> float:
        return min(self.width, self.height) / 128.0


PRESETS: dict[str, WorldConfig] = {"world-128": WorldConfig()}


@dataclass(frozen=True)
class Sprite:
    shape: str
    colour: str
    radius: float

    @property
    def rgb(self) -> tuple[int, int, int]:
        return COLOURS[self.colour]

    def phrase(self, rng: np.random.Generator | None = None) -> str:
        noun = SYNONYMS[self.shape][0] if rng is None else rng.choice(SYNONYMS[self.shape])
        return f"{'an' if self.colour[0] in 'aeiou' else 'a'} {self.colour} {noun}"


@dataclass
class Scene:
    background: str
    sprites: list[Sprite]
    motions: list[str]
    seed: int

    def prompt(self, rng: np.random.Generator | None = None) -> str:
        """Canonical prompt, or a random paraphrase when given a generator."""
        phrases = [s.phrase(rng) for s in self.sprites]
        sprites = phrases[0] if len(phrases) == 1 else ", ".join(phrases[:-1]) + " and " + phrases[-1]
        if rng is None:
            return TEMPLATES[0].format(sprites=sprites, bg=self.background)
        bg = rng.choice(SYNONYMS[self.background])
        text = rng.choice(TEMPLATES).format(sprites=sprites, bg=bg)
        return text[0].upper() + text[1:] if rng.random() < 0.5 else text


@dataclass
class Clip:
    frames: np.ndarray       # uint8 [T, H, W, 3]
    trajectory: Trajectory
    prompt: str
    scene: Scene
    background: np.ndarray = field(repr=False)  # uint8 [H, W, 3], the clip's static background


def parse_prompt(prompt: str) -> tuple[list[tuple[str, str]], str | None]:
    """'a red circle and a blue square on sand' -> ([('red', 'circle'), ('blue', 'square')], 'sand').

    Used to know which colour each track should have (evaluation, UI hints); unknown words are ignored."""
    words = re.findall(r"[a-z]+", prompt.lower())
    shape_of = {syn: shape for shape in SHAPES for syn in SYNONYMS[shape] if " " not in syn}
    bg_of = {syn.split()[-1]: bg for bg in BACKGROUNDS for syn in SYNONYMS[bg]}
    sprites, colour, background = [], None, None
    for i, w in enumerate(words):
        if w in COLOURS and i + 1 < len(words) and words[i + 1] in shape_of:
            colour = w
        elif w in shape_of and colour is not None:
            sprites.append((colour, shape_of[w]))
            colour = None
        elif w in bg_of and (i + 1 >= len(words) or words[i + 1] not in shape_of):
            background = bg_of[w]
    return sprites, background


class World:
    def __init__(self, config: WorldConfig | None = None):
        self.config = config or WorldConfig()

    # ---- scene and motion ------------------------------------------------------------------------
    def scene(self, seed: int) -> Scene:
        rng = np.random.default_rng([seed, 1])
        cfg = self.config
        if cfg.background_weights is None:
            background = str(rng.choice(list(BACKGROUNDS)))
        else:  # a different draw: a weighted world's scenes are not the default world's
            background = str(rng.choice(list(BACKGROUNDS), p=cfg.background_probabilities))
        n = int(rng.choice(np.arange(1, len(cfg.sprite_weights) + 1), p=np.array(cfg.sprite_weights) / sum(cfg.sprite_weights)))
        n = min(n, cfg.max_sprites)
        colours = [c for c in COLOURS if (c, background) not in CLASHES]
        pairs = [p for p in NEAR_COLOURS if p[0] in colours and p[1] in colours]
        if cfg.near_colours > 0 and n >= 2 and pairs and rng.random() < cfg.near_colours:
            pair = list(pairs[int(rng.integers(len(pairs)))])
            rest = [c for c in colours if c not in pair]
            picked = list(rng.permutation(pair + list(rng.choice(rest, size=n - 2, replace=False))))
        else:
            picked = rng.choice(colours, size=n, replace=False)
        sprites = [Sprite(str(rng.choice(SHAPES)), str(c), float(rng.uniform(*cfg.radius)) * cfg.scale) for c in picked]
        p = np.asarray(cfg.motion_weights, np.float64)
        motions = [str(rng.choice(MOTIONS, p=p / p.sum())) for _ in range(n)]
        return Scene(background, sprites, motions, seed)

    def spawn_scene(self, seed: int) -> Scene:
        """The seed's scene laid out as a text-only clip: same background, shapes and colours, every
        sprite of the middle radius and bouncing (see the module docstring)."""
        scene = self.scene(seed)
        r = sum(self.config.radius) / 2 * self.config.scale
        sprites = [Sprite(sp.shape, sp.colour, r) for sp in scene.sprites]
        return Scene(scene.background, sprites, ["spawn"] * len(sprites), seed)

    def spawn_points(self, n: int) -> np.ndarray:
        """float [n, 2]: where n sprites of a text-only clip start (x, y pixels), in prompt order."""
        w, h = self.config.width, self.config.height
        return np.array([[w * (i + 1) / (n + 1), h / 2] for i in range(n)], np.float32)

    def trajectory(self, scene: Scene, num_frames: int, starts: np.ndarray | None = None) -> Trajectory:
        """The scene's tracks over num_frames video frames. starts: float [n, 2] (x, y pixels), where
        the text-only layout's sprites start instead of the spawn points (their heading and speed
        stay the world's): the same clip continued from where a model put its sprites."""
        cfg = self.config
        tracks = np.zeros((num_frames, len(scene.sprites), 2), np.float32)
        if starts is None:
            starts = self.spawn_points(len(scene.sprites))
        elif np.shape(starts) != (len(scene.sprites), 2):
            raise ValueError(f"starts must be [{len(scene.sprites)}, 2] (x, y per sprite), got {np.shape(starts)}")
        for n, (sprite, motion) in enumerate(zip(scene.sprites, scene.motions)):
            rng = np.random.default_rng([scene.seed, 2, n])
            if motion == "spawn":  # a straight bounce from the spawn point, the same for every seed
                tracks[:, n] = self._path(rng, "bounce", sprite.radius, num_frames, start=starts[n],
                                          heading=np.deg2rad(SPAWN_HEADINGS[n % len(SPAWN_HEADINGS)]),
                                          speed=SPAWN_SPEED * cfg.scale)
                continue
            tracks[:, n] = self._path(rng, motion, sprite.radius, num_frames)
        w, h = cfg.width, cfg.height
        visible = (tracks[..., 0] >= 0) & (tracks[..., 0] < w) & (tracks[..., 1] >= 0) & (tracks[..., 1] < h)
        return Trajectory(tracks, visible, cfg.fps, w, h)

    def drag_path(self, seed: int, start: np.ndarray, radius: float, num_frames: int) -> np.ndarray:
        """float [num_frames, 2] (x, y pixels): a stroke a user draws from `start` (a sprite's centre),
        the world's "smooth" motion (a wandering heading at a drawn speed, kept whole in the frame by
        reflecting off the walls) with the seed's own draws, so a held-out scene's drag is fixed."""
        return self._path(np.random.default_rng([seed, 6]), "smooth", radius, num_frames,
                          start=np.asarray(start, np.float64))

    def _path(self, rng: np.random.Generator, motion: str, radius: float, n: int, start: np.ndarray | None = None,
              heading: float | None = None, speed: float | None = None) -> np.ndarray:
        """One sprite's centre per frame. Velocity integration with a smoothly wandering heading:
        'bounce' keeps its heading, 'smooth' wanders, 'stopstart' pauses now and then, 'cross'
        flies straight through the frame without bouncing and re-enters from another edge later.
        start (x, y px), heading (radians) and speed (px per frame) replace the random draws (which
        are still made, so the other draws stay as they were)."""
        cfg = self.config
        w, h = cfg.width, cfg.height
        lo, hi = radius, np.array([w - radius, h - radius])
        drawn_speed = rng.uniform(*cfg.speed) * cfg.scale
        drawn_heading = rng.uniform(0, 2 * np.pi)
        turn_rate = {"smooth": 0.08, "bounce": 0.0, "stopstart": 0.05, "cross": 0.01}[motion]
        drawn_pos = rng.uniform(lo, hi)
        speed = drawn_speed if speed is None else speed
        heading = drawn_heading if heading is None else heading
        pos = drawn_pos if start is None else np.asarray(start, np.float64)
        if motion == "cross":
            pos, heading = self._entry(rng, radius)
        out = np.zeros((n, 2), np.float32)
        turn = 0.0
        moving, phase_left = True, int(rng.integers(8, 40))
        gone = 0  # frames left off-screen before a crossing sprite re-enters
        for i in range(n):
            out[i] = pos
            if motion == "stopstart":
                phase_left -= 1
                if phase_left <= 0:
                    moving = not moving
                    phase_left = int(rng.integers(6, 24)) if not moving else int(rng.integers(12, 48))
            turn = 0.9 * turn + turn_rate * rng.normal()
            heading += turn
            v = speed * np.array([np.cos(heading), np.sin(heading)]) * (1.0 if moving else 0.0)
            if motion == "cross":
                if gone > 0:
                    gone -= 1
                    if gone == 0:
                        pos, heading = self._entry(rng, radius)
                    continue
                pos = pos + v
                outside = (pos < -radius * 1.5).any() or (pos[0] > w + radius * 1.5) or (pos[1] > h + radius * 1.5)
                if outside:
                    gone = int(rng.integers(4, 32))
                continue
            pos = pos + v
            # reflect off the walls so the sprite stays whole in the frame
            for a in range(2):
                if pos[a] < lo:
                    pos[a] = 2 * lo - pos[a]
                    heading = np.pi - heading if a == 0 else -heading
                elif pos[a] > hi[a]:
                    pos[a] = 2 * hi[a] - pos[a]
                    heading = np.pi - heading if a == 0 else -heading
        return out

    def _entry(self, rng: np.random.Generator, radius: float) -> tuple[np.ndarray, float]:
        """A point just outside a random edge, heading into the frame."""
        w, h = self.config.width, self.config.height
        edge = int(rng.integers(4))
        off = radius * 1.2
        if edge == 0:
            pos, heading = np.array([-off, rng.uniform(0.2, 0.8) * h]), 0.0
        elif edge == 1:
            pos, heading = np.array([w + off, rng.uniform(0.2, 0.8) * h]), np.pi
        elif edge == 2:
            pos, heading = np.array([rng.uniform(0.2, 0.8) * w, -off]), np.pi / 2
        else:
            pos, heading = np.array([rng.uniform(0.2, 0.8) * w, h + off]), -np.pi / 2
        return pos, heading + rng.uniform(-0.5, 0.5)

    # ---- drawing ---------------------------------------------------------------------------------
    def background(self, name: str, seed: int) -> np.ndarray:
        cfg = self.config
        rng = np.random.default_rng([seed, 3])
        base, blotch, grain, stripes = BACKGROUNDS[name]
        w, h = cfg.width, cfg.height
        low = rng.normal(size=(max(2, h // 16), max(2, w // 16), 1)).astype(np.float32)
        img = np.asarray(base, np.float32) + blotch * cv2.resize(low, (w, h), interpolation=cv2.INTER_CUBIC)[..., None]
        img = img + grain * rng.normal(size=(h, w, 1)).astype(np.float32)
        if stripes:  # gentle waves
            y = np.arange(h, dtype=np.float32)[:, None, None]
            x = np.arange(w, dtype=np.float32)[None, :, None]
            img = img + 12.0 * np.sin(y * 0.35 / cfg.scale + 0.6 * np.sin(x * 0.08 / cfg.scale + rng.uniform(0, 6)))
        return np.clip(img, 0, 255).astype(np.uint8)

    @staticmethod
    def draw(img: np.ndarray, sprite: Sprite, x: float, y: float) -> None:
        """Draw one sprite centred (area centroid) at (x, y), antialiased with sub-pixel precision."""
        s = 16  # cv2 `shift=4`: coordinates in 1/16 px
        r = sprite.radius
        colour = tuple(int(c) for c in sprite.rgb)
        if sprite.shape == "circle":
            cv2.circle(img, (round(x * s), round(y * s)), round(r * s), colour, -1, cv2.LINE_AA, shift=4)
            return
        if sprite.shape == "square":
            a = r * 0.9
            pts = [(x - a, y - a), (x + a, y - a), (x + a, y + a), (x - a, y + a)]
        elif sprite.shape == "diamond":
            a = r * 1.15
            pts = [(x, y - a), (x + a, y), (x, y + a), (x - a, y)]
        else:  # equilateral triangle around its centroid
            a = r * 1.25
            pts = [(x + a * np.cos(t), y + a * np.sin(t)) for t in np.deg2rad([-90, 30, 150])]
        poly = np.array([[round(px * s), round(py * s)] for px, py in pts], np.int32)
        cv2.fillConvexPoly(img, poly, colour, cv2.LINE_AA, shift=4)

    def render(self, background: np.ndarray, sprites: list[Sprite], traj: Trajectory) -> np.ndarray:
        frames = np.empty((traj.num_frames, *background.shape), np.uint8)
        for i in range(traj.num_frames):
            img = background.copy()
            for n, sprite in enumerate(sprites):
                x, y = traj.tracks[i, n]
                r = sprite.radius * 1.5
                if -r < x < img.shape[1] + r and -r < y < img.shape[0] + r:  # partly visible at the edges
                    self.draw(img, sprite, float(x), float(y))
            frames[i] = img
        return frames

    def clip(self, seed: int, num_frames: int = 45, paraphrase: bool = False, spawn: bool = False,
             starts: np.ndarray | None = None, offset: int = 0) -> Clip:
        """The clip of a seed: frames, ground-truth trajectory and prompt (a paraphrase if asked).
        spawn: the text-only layout (spawn points, fixed bounce; see the module docstring). starts
        (float [n, 2], pixels; spawn only): the sprites start there instead (`trajectory`).
        offset (video frames): the clip is frames offset .. offset + num_frames of the seed's motion
        (a text-only clip later on, after bounces off the walls). Raises ValueError for starts
        without spawn, or a negative offset."""
        if starts is not None and not spawn:
            raise ValueError("starts move the text-only layout's sprites: pass spawn=True")
        if offset < 0:
            raise ValueError(f"offset must be >= 0 video frames, got {offset}")
        scene = self.spawn_scene(seed) if spawn else self.scene(seed)
        traj = self.trajectory(scene, offset + num_frames, starts)
        if offset:
            traj = Trajectory(traj.tracks[offset:], traj.visible[offset:], traj.fps, traj.width, traj.height)
        bg = self.background(scene.background, seed)
        prompt = scene.prompt(np.random.default_rng([seed, 4]) if paraphrase else None)
        return Clip(self.render(bg, scene.sprites, traj), traj, prompt, scene, bg)


def colour_centroid(frame: np.ndarray, rgb: tuple[int, int, int], tol: float = 70.0,
                    min_pixels: int = 6) -> tuple[float, float] | None:
    """Centroid (x, y) of the pixels within `tol` (RGB distance) of a colour, or None when too few."""
    d = np.linalg.norm(frame.astype(np.float32) - np.asarray(rgb, np.float32), axis=-1)
    ys, xs = np.nonzero(d < tol)
    if len(xs) < min_pixels:
        return None
    return float(xs.mean()), float(ys.mean())
