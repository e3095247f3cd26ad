"""Mask geometry and styles on synthetic frames (geometry only; real faces are in test_coverage/test_leaks)."""

from __future__ import annotations

import numpy as np
import pytest

from edge_mask.config import MaskConfig
from edge_mask.core.types import RawFrame
from edge_mask.mask.geometry import FULL_TURN, YAW_REACH, head_shape
from edge_mask.mask.paint import EXTRA_UP, Painter, head_regions, mask_faces, mask_whole_frame, region_mask

H, W = 240, 320
FACE = np.array([[120, 80, 180, 150]], np.float32)  # 60 x 70 px


def textured(seed: int = 1) -> np.ndarray:
    """A noisy frame so every masked pixel visibly changes."""
    return np.random.default_rng(seed).integers(0, 256, (H, W, 3), dtype=np.uint8)


def raw(image: np.ndarray) -> RawFrame:
    return RawFrame(image, seq=7, captured_at=1000.0, monotonic=5.0)


def face_pixels(mask: np.ndarray, box: np.ndarray) -> np.ndarray:
    x1, y1, x2, y2 = (int(v) for v in box)
    return mask[y1:y2, x1:x2]


def test_head_region_pads_sides_and_extends_up_more_than_down() -> None:
    region = head_regions(FACE, W, H, padding=0.35)[0]
    x1, y1, x2, y2 = FACE[0]
    assert region[0] == pytest.approx(x1 - 0.35 * 60)
    assert region[2] == pytest.approx(x2 + 0.35 * 60)
    assert region[1] == pytest.approx(y1 - (0.35 + EXTRA_UP) * 70)
    up, down = y1 - region[1], region[3] - y2
    assert up > down > 0.35 * 70 - 1e-3


def test_head_region_is_clipped_to_the_frame() -> None:
    region = head_regions(np.array([[-50, -40, 30, 60]], np.float32), W, H, padding=0.35)[0]
    assert region.tolist()[:2] == [0.0, 0.0]
    assert 0 < region[2] <= W and 0 < region[3] <= H
    assert head_regions(np.zeros((0, 4), np.float32), W, H, 0.35).shape == (0, 4)


@pytest.mark.parametrize("shape", ["ellipse", "rect"])
def test_the_whole_face_box_is_inside_the_mask_shape(shape: str) -> None:
    mask = region_mask(FACE, W, H, padding=MaskConfig().padding, shape=shape)
    assert face_pixels(mask, FACE[0]).all()
    assert mask.mean() < 0.5, "the mask is a head, not the frame"


def test_a_face_cut_by_the_frame_edge_is_masked_up_to_the_edge() -> None:
    edge_face = np.array([[-20, 100, 40, 170]], np.float32)
    mask = region_mask(edge_face, W, H, padding=0.35)
    assert mask[100:170, 0:40].all()


def test_solid_fills_the_head_with_the_colour_and_leaves_the_rest() -> None:
    image = textured()
    painter = Painter(MaskConfig(style="solid", color=(255, 0, 255)))
    out = mask_faces(raw(image), FACE, np.zeros((1, 5, 2), np.float32), painter)
    inside = face_pixels(out.image, FACE[0])
    assert np.all(inside == np.array([255, 0, 255], np.uint8))
    assert np.array_equal(out.image[:, 260:], image[:, 260:]), "pixels far from the face are untouched"
    assert not np.shares_memory(out.image, image)
    assert np.array_equal(image, textured()), "the raw frame is not modified"
    assert out.faces == 1 and not out.fail_closed and out.seq == 7 and out.captured_at == 1000.0
    region = out.regions[0]
    assert region[0] <= FACE[0, 0] and region[1] <= FACE[0, 1] and region[2] >= FACE[0, 2]


def test_pixelate_is_coarse_blocks_with_noise() -> None:
    image = textured()
    painter = Painter(MaskConfig(style="pixelate", pixel_blocks=6, noise=24))
    a = mask_faces(raw(image), FACE, np.zeros((1, 5, 2), np.float32), painter).image
    b = mask_faces(raw(image), FACE, np.zeros((1, 5, 2), np.float32), painter).image
    inside = face_pixels(a, FACE[0]).reshape(-1, 3)
    # 60 px face in 6 blocks: about 10 px blocks, so few distinct colours remain in the 60x70 face box.
    assert len(np.unique(inside, axis=0)) <= 8 * 9
    assert np.mean(np.any(face_pixels(a, FACE[0]) != face_pixels(image, FACE[0]), axis=2)) > 0.95
    assert not np.array_equal(a, b), "noise differs run to run, so averaging outputs does not undo it"
    assert np.array_equal(a[:, 260:], image[:, 260:])


def test_blur_is_strong_and_noisy() -> None:
    image = np.zeros((H, W, 3), np.uint8)
    image[90:140, 130:170] = 255  # a bright "face" on black: blur spreads it, noise roughens it
    painter = Painter(MaskConfig(style="blur", blur_sigma=25, noise=24))
    out = mask_faces(raw(image), FACE, np.zeros((1, 5, 2), np.float32), painter).image
    inside = face_pixels(out, FACE[0]).astype(np.int16)
    assert inside.max() < 200, "the sharp bright patch is spread out"
    assert inside.std() > 5
    assert np.array_equal(out[:, 260:], image[:, 260:])


@pytest.mark.parametrize("style", ["solid", "pixelate", "blur"])
@pytest.mark.parametrize("shape", ["ellipse", "rect"])
def test_every_style_and_shape_changes_the_face_and_survives_edge_faces(style: str, shape: str) -> None:
    image = textured(3)
    faces = np.array([[120, 80, 180, 150], [-30, -30, 20, 25], [300, 200, 360, 280]], np.float32)
    out = mask_faces(raw(image), faces, np.zeros((3, 5, 2), np.float32),
                     Painter(MaskConfig(style=style, shape=shape))).image
    changed = np.any(out != image, axis=2)
    assert face_pixels(changed, faces[0]).mean() > 0.95
    assert changed[0:25, 0:20].mean() > 0.95
    assert changed[200:240, 300:320].mean() > 0.95


def test_whole_frame_mask_hides_every_pixel() -> None:
    image = textured()
    out = mask_whole_frame(raw(image), (10, 20, 30))
    assert np.all(out.image == np.array([10, 20, 30], np.uint8))
    assert out.fail_closed and out.faces == 0
    assert out.regions.tolist() == [[0, 0, W, H]]
    assert out.landmarks.shape == (0, 5, 2)


# ------------------------------------------------------------------------------ shape from the landmarks


def frontal_points(box: np.ndarray, roll_deg: float = 0.0, turn: float = 0.0) -> np.ndarray:
    """YuNet-ordered points (right eye, left eye, nose, mouth corners) for a face in `box`, rolled about the
    box centre by `roll_deg` and with the nose moved `turn` eye distances along the eye line."""
    x1, y1, x2, y2 = (float(v) for v in box)
    cx, cy, w, h = (x1 + x2) / 2, (y1 + y2) / 2, x2 - x1, y2 - y1
    eye = 0.4 * w
    local = np.array([[-eye / 2, -0.15 * h], [eye / 2, -0.15 * h], [turn * eye, 0.05 * h],
                      [-0.3 * w, 0.25 * h], [0.3 * w, 0.25 * h]], np.float32)
    t = np.radians(roll_deg)
    rot = np.array([[np.cos(t), -np.sin(t)], [np.sin(t), np.cos(t)]], np.float32)
    return (local @ rot.T + np.array([cx, cy], np.float32)).reshape(1, 5, 2)


def test_a_frontal_upright_face_gets_the_upright_ellipse() -> None:
    plain = region_mask(FACE, W, H, MaskConfig().padding)
    shaped = region_mask(FACE, W, H, MaskConfig().padding, landmarks=frontal_points(FACE[0]))
    assert (plain != shaped).mean() < 0.002


def test_degenerate_landmarks_are_ignored() -> None:
    """Zeros (a caller with no landmarks) or points on a line upside down keep the upright shape."""
    plain = region_mask(FACE, W, H, 0.2)
    assert np.array_equal(region_mask(FACE, W, H, 0.2, landmarks=np.zeros((1, 5, 2), np.float32)), plain)
    flipped = frontal_points(FACE[0], roll_deg=180.0)
    assert np.array_equal(region_mask(FACE, W, H, 0.2, landmarks=flipped), plain)


@pytest.mark.parametrize("roll", [-40.0, -20.0, 20.0, 40.0])
def test_a_rolled_head_turns_the_ellipse_and_keeps_the_box_inside(roll: float) -> None:
    points = frontal_points(FACE[0], roll_deg=roll)
    head = head_shape(FACE[0], 0.2, points[0])
    assert head.angle == pytest.approx(roll, abs=0.5)
    mask = region_mask(FACE, W, H, 0.2, landmarks=points)
    assert face_pixels(mask, FACE[0]).mean() >= 0.9, "the detected box stays masked but for background corners"
    for x, y in points[0]:
        assert mask[int(y), int(x)], "eyes, nose and mouth are masked"
    # the crown is masked on the side the head leans to: along the face's up direction, not the image's
    x1, y1, x2, y2 = FACE[0]
    cx, cy, h = (x1 + x2) / 2, (y1 + y2) / 2, y2 - y1
    t = np.radians(roll)
    crown = (int(cx + np.sin(t) * 0.8 * h), int(cy - np.cos(t) * 0.8 * h))
    assert mask[crown[1], crown[0]]


@pytest.mark.parametrize("turn", [-FULL_TURN, FULL_TURN])
def test_a_turned_face_is_masked_further_on_the_nose_side(turn: float) -> None:
    points = frontal_points(FACE[0], turn=turn)
    plain = region_mask(FACE, W, H, 0.2)
    turned = region_mask(FACE, W, H, 0.2, landmarks=points)
    cols = np.flatnonzero(turned.any(axis=0))
    plain_cols = np.flatnonzero(plain.any(axis=0))
    w = float(FACE[0][2] - FACE[0][0])
    if turn < 0:
        assert plain_cols[0] - cols[0] >= YAW_REACH * w - 2
        assert cols[-1] >= plain_cols[-1] - 1, "the back of the head stays covered"
    else:
        assert cols[-1] - plain_cols[-1] >= YAW_REACH * w - 2
        assert cols[0] <= plain_cols[0] + 1
    assert face_pixels(turned, FACE[0]).all()


def test_a_slightly_turned_face_keeps_the_plain_width() -> None:
    plain = region_mask(FACE, W, H, 0.2)
    slight = region_mask(FACE, W, H, 0.2, landmarks=frontal_points(FACE[0], turn=0.2))
    assert (plain != slight).mean() < 0.002


def test_held_faces_without_landmarks_keep_the_upright_shape() -> None:
    """Landmarks belong to the first boxes (seen this frame); the rest (held) are upright."""
    second = FACE + np.array([[150, 0, 150, 0]], np.float32)
    both = np.concatenate([FACE, second])
    points = frontal_points(FACE[0], roll_deg=30.0)
    mask = region_mask(both, W, H, 0.2, landmarks=points)
    assert np.array_equal(mask[:, 300:], region_mask(second, W, H, 0.2)[:, 300:])
