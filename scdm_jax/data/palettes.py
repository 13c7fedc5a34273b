"""Class tables (names, colours, unlabeled class) of the built-in datasets and custom JSON.

A class table is the single source of truth for a dataset's classes: the pipeline, the label
loader, the colouriser and the class-statistics command all read it. Index `i` of `names` and
`colors` is the *class id* `i` (the one-hot channel), not the raw value stored in the
dataset's PNGs; `raw_to_class` in `layouts.py` maps the latter to the former.

Sources of the built-in colours:
- ADE20K: the 150-colour palette of the ADE20K scene-parsing toolkit (as used by mmseg and by
  ControlNet's segmentation model); "unlabeled" (class 150) is black.
- COCO-Stuff: the 182 class names of cocostuff `labels.txt` (raw value = COCO id - 1);
  colours are the PASCAL-VOC bit-interleaved colour map of `id + 1` (the scheme SPADE's
  `labelcolormap` uses), so that "unlabeled" (class 182) is black.
- Cityscapes: the official `cityscapesscripts` label table (ids 0..33, and 34 = license
  plate, whose official id is -1). Several classes share a colour there (ids 0-4 are black,
  pole/polegroup, car/license plate); snapping an RGB map picks the lowest id of a colour
  (`colour_ties` lists them; the label loader says so when a map uses such a colour).
- CelebAMask-HQ: the 19 part names and colours of the CelebAMask-HQ preprocessing script.
"""

from __future__ import annotations

import dataclasses
import json
import os

import numpy as np

from scdm_jax.io import atomic


@dataclasses.dataclass(frozen=True)
class ClassTable:
  """Names and RGB colours of a dataset's classes.

  Attributes:
    name: dataset name ("ade20k", ...) or a file stem for custom tables.
    names: class names, index = class id.
    colors: (K, 3) uint8 RGB colours, index = class id.
    unlabeled_class: class id of "unlabeled" (ADE20K 150, COCO-Stuff 182, Cityscapes 0),
      or None when the dataset has no such class (CelebAMask-HQ).
  """

  name: str
  names: tuple[str, ...]
  colors: np.ndarray
  unlabeled_class: int | None = None

  @property
  def num_classes(self) -> int:
    return len(self.names)

  def to_json(self) -> dict:
    return {"name": self.name, "names": list(self.names),
            "colors": [list(map(int, c)) for c in self.colors],
            "unlabeled_class": self.unlabeled_class}


_ADE20K_NAMES = (
    'wall', 'building', 'sky', 'floor', 'tree', 'ceiling', 'road', 'bed', 'windowpane',
    'grass', 'cabinet', 'sidewalk', 'person', 'earth', 'door', 'table', 'mountain', 'plant',
    'curtain', 'chair', 'car', 'water', 'painting', 'sofa', 'shelf', 'house', 'sea', 'mirror',
    'rug', 'field', 'armchair', 'seat', 'fence', 'desk', 'rock', 'wardrobe', 'lamp', 'bathtub',
    'railing', 'cushion', 'base', 'box', 'column', 'signboard', 'chest of drawers', 'counter',
    'sand', 'sink', 'skyscraper', 'fireplace', 'refrigerator', 'grandstand', 'path', 'stairs',
    'runway', 'case', 'pool table', 'pillow', 'screen door', 'stairway', 'river', 'bridge',
    'bookcase', 'blind', 'coffee table', 'toilet', 'flower', 'book', 'hill', 'bench',
    'countertop', 'stove', 'palm', 'kitchen island', 'computer', 'swivel chair', 'boat', 'bar',
    'arcade machine', 'hovel', 'bus', 'towel', 'light', 'truck', 'tower', 'chandelier',
    'awning', 'streetlight', 'booth', 'television receiver', 'airplane', 'dirt track',
    'apparel', 'pole', 'land', 'bannister', 'escalator', 'ottoman', 'bottle', 'buffet',
    'poster', 'stage', 'van', 'ship', 'fountain', 'conveyer belt', 'canopy', 'washer',
    'plaything', 'swimming pool', 'stool', 'barrel', 'basket', 'waterfall', 'tent', 'bag',
    'minibike', 'cradle', 'oven', 'ball', 'food', 'step', 'tank', 'trade name', 'microwave',
    'pot', 'animal', 'bicycle', 'lake', 'dishwasher', 'screen', 'blanket', 'sculpture', 'hood',
    'sconce', 'vase', 'traffic light', 'tray', 'ashcan', 'fan', 'pier', 'crt screen', 'plate',
    'monitor', 'bulletin board', 'shower', 'radiator', 'glass', 'clock', 'flag',
)

_ADE20K_COLORS = (
    (120, 120, 120), (180, 120, 120), (6, 230, 230), (80, 50, 50), (4, 200, 3), (120, 120, 80),
    (140, 140, 140), (204, 5, 255), (230, 230, 230), (4, 250, 7), (224, 5, 255), (235, 255, 7),
    (150, 5, 61), (120, 120, 70), (8, 255, 51), (255, 6, 82), (143, 255, 140), (204, 255, 4),
    (255, 51, 7), (204, 70, 3), (0, 102, 200), (61, 230, 250), (255, 6, 51), (11, 102, 255),
    (255, 7, 71), (255, 9, 224), (9, 7, 230), (220, 220, 220), (255, 9, 92), (112, 9, 255),
    (8, 255, 214), (7, 255, 224), (255, 184, 6), (10, 255, 71), (255, 41, 10), (7, 255, 255),
    (224, 255, 8), (102, 8, 255), (255, 61, 6), (255, 194, 7), (255, 122, 8), (0, 255, 20),
    (255, 8, 41), (255, 5, 153), (6, 51, 255), (235, 12, 255), (160, 150, 20), (0, 163, 255),
    (140, 140, 140), (250, 10, 15), (20, 255, 0), (31, 255, 0), (255, 31, 0), (255, 224, 0),
    (153, 255, 0), (0, 0, 255), (255, 71, 0), (0, 235, 255), (0, 173, 255), (31, 0, 255),
    (11, 200, 200), (255, 82, 0), (0, 255, 245), (0, 61, 255), (0, 255, 112), (0, 255, 133),
    (255, 0, 0), (255, 163, 0), (255, 102, 0), (194, 255, 0), (0, 143, 255), (51, 255, 0),
    (0, 82, 255), (0, 255, 41), (0, 255, 173), (10, 0, 255), (173, 255, 0), (0, 255, 153),
    (255, 92, 0), (255, 0, 255), (255, 0, 245), (255, 0, 102), (255, 173, 0), (255, 0, 20),
    (255, 184, 184), (0, 31, 255), (0, 255, 61), (0, 71, 255), (255, 0, 204), (0, 255, 194),
    (0, 255, 82), (0, 10, 255), (0, 112, 255), (51, 0, 255), (0, 194, 255), (0, 122, 255),
    (0, 255, 163), (255, 153, 0), (0, 255, 10), (255, 112, 0), (143, 255, 0), (82, 0, 255),
    (163, 255, 0), (255, 235, 0), (8, 184, 170), (133, 0, 255), (0, 255, 92), (184, 0, 255),
    (255, 0, 31), (0, 184, 255), (0, 214, 255), (255, 0, 112), (92, 255, 0), (0, 224, 255),
    (112, 224, 255), (70, 184, 160), (163, 0, 255), (153, 0, 255), (71, 255, 0), (255, 0, 163),
    (255, 204, 0), (255, 0, 143), (0, 255, 235), (133, 255, 0), (255, 0, 235), (245, 0, 255),
    (255, 0, 122), (255, 245, 0), (10, 190, 212), (214, 255, 0), (0, 204, 255), (20, 0, 255),
    (255, 255, 0), (0, 153, 255), (0, 41, 255), (0, 255, 204), (41, 0, 255), (41, 255, 0),
    (173, 0, 255), (0, 245, 255), (71, 0, 255), (122, 0, 255), (0, 255, 184), (0, 92, 255),
    (184, 255, 0), (0, 133, 255), (255, 214, 0), (25, 194, 194), (102, 255, 0), (92, 0, 255),
)

_COCO_STUFF_NAMES = (
    'person', 'bicycle', 'car', 'motorcycle', 'airplane', 'bus', 'train', 'truck', 'boat',
    'traffic light', 'fire hydrant', 'street sign', 'stop sign', 'parking meter', 'bench',
    'bird', 'cat', 'dog', 'horse', 'sheep', 'cow', 'elephant', 'bear', 'zebra', 'giraffe',
    'hat', 'backpack', 'umbrella', 'shoe', 'eye glasses', 'handbag', 'tie', 'suitcase',
    'frisbee', 'skis', 'snowboard', 'sports ball', 'kite', 'baseball bat', 'baseball glove',
    'skateboard', 'surfboard', 'tennis racket', 'bottle', 'plate', 'wine glass', 'cup', 'fork',
    'knife', 'spoon', 'bowl', 'banana', 'apple', 'sandwich', 'orange', 'broccoli', 'carrot',
    'hot dog', 'pizza', 'donut', 'cake', 'chair', 'couch', 'potted plant', 'bed', 'mirror',
    'dining table', 'window', 'desk', 'toilet', 'door', 'tv', 'laptop', 'mouse', 'remote',
    'keyboard', 'cell phone', 'microwave', 'oven', 'toaster', 'sink', 'refrigerator',
    'blender', 'book', 'clock', 'vase', 'scissors', 'teddy bear', 'hair drier', 'toothbrush',
    'hair brush', 'banner', 'blanket', 'branch', 'bridge', 'building-other', 'bush', 'cabinet',
    'cage', 'cardboard', 'carpet', 'ceiling-other', 'ceiling-tile', 'cloth', 'clothes',
    'clouds', 'counter', 'cupboard', 'curtain', 'desk-stuff', 'dirt', 'door-stuff', 'fence',
    'floor-marble', 'floor-other', 'floor-stone', 'floor-tile', 'floor-wood', 'flower', 'fog',
    'food-other', 'fruit', 'furniture-other', 'grass', 'gravel', 'ground-other', 'hill',
    'house', 'leaves', 'light', 'mat', 'metal', 'mirror-stuff', 'moss', 'mountain', 'mud',
    'napkin', 'net', 'paper', 'pavement', 'pillow', 'plant-other', 'plastic', 'platform',
    'playingfield', 'railing', 'railroad', 'river', 'road', 'rock', 'roof', 'rug', 'salad',
    'sand', 'sea', 'shelf', 'sky-other', 'skyscraper', 'snow', 'solid-other', 'stairs',
    'stone', 'straw', 'structural-other', 'table', 'tent', 'textile-other', 'towel', 'tree',
    'vegetable', 'wall-brick', 'wall-concrete', 'wall-other', 'wall-panel', 'wall-stone',
    'wall-tile', 'wall-wood', 'water-other', 'waterdrops', 'window-blind', 'window-other',
    'wood',
)

_CITYSCAPES = (
    ("unlabeled", (0, 0, 0)), ("ego vehicle", (0, 0, 0)), ("rectification border", (0, 0, 0)),
    ("out of roi", (0, 0, 0)), ("static", (0, 0, 0)), ("dynamic", (111, 74, 0)),
    ("ground", (81, 0, 81)), ("road", (128, 64, 128)), ("sidewalk", (244, 35, 232)),
    ("parking", (250, 170, 160)), ("rail track", (230, 150, 140)), ("building", (70, 70, 70)),
    ("wall", (102, 102, 156)), ("fence", (190, 153, 153)), ("guard rail", (180, 165, 180)),
    ("bridge", (150, 100, 100)), ("tunnel", (150, 120, 90)), ("pole", (153, 153, 153)),
    ("polegroup", (153, 153, 153)), ("traffic light", (250, 170, 30)),
    ("traffic sign", (220, 220, 0)), ("vegetation", (107, 142, 35)), ("terrain", (152, 251, 152)),
    ("sky", (70, 130, 180)), ("person", (220, 20, 60)), ("rider", (255, 0, 0)),
    ("car", (0, 0, 142)), ("truck", (0, 0, 70)), ("bus", (0, 60, 100)), ("caravan", (0, 0, 90)),
    ("trailer", (0, 0, 110)), ("train", (0, 80, 100)), ("motorcycle", (0, 0, 230)),
    ("bicycle", (119, 11, 32)), ("license plate", (0, 0, 142)),
)

_CELEBAMASK_HQ = (
    ("background", (0, 0, 0)), ("skin", (204, 0, 0)), ("nose", (76, 153, 0)),
    ("eye_g", (204, 204, 0)), ("l_eye", (51, 51, 255)), ("r_eye", (204, 0, 204)),
    ("l_brow", (0, 255, 255)), ("r_brow", (255, 204, 204)), ("l_ear", (102, 51, 0)),
    ("r_ear", (255, 0, 0)), ("mouth", (102, 204, 0)), ("u_lip", (255, 255, 0)),
    ("l_lip", (0, 0, 153)), ("hair", (0, 0, 204)), ("hat", (255, 51, 153)),
    ("ear_r", (0, 204, 204)), ("neck_l", (0, 51, 0)), ("neck", (255, 153, 51)),
    ("cloth", (0, 204, 0)),
)


def voc_colormap(n: int) -> np.ndarray:
  """PASCAL-VOC bit-interleaved colour map: (n, 3) uint8, entry 0 is black."""
  ids = np.arange(n)
  cmap = np.zeros((n, 3), np.int64)
  for shift in range(8):
    for ch in range(3):
      bit = (ids >> (3 * shift + ch)) & 1
      cmap[:, ch] |= bit << (7 - shift)
  return cmap.astype(np.uint8)


def _ade20k() -> ClassTable:
  colors = np.array(_ADE20K_COLORS + ((0, 0, 0),), np.uint8)
  return ClassTable("ade20k", _ADE20K_NAMES + ("unlabeled",), colors, unlabeled_class=150)


def _coco_stuff() -> ClassTable:
  colors = voc_colormap(184)[1:]  # class i -> VOC colour of i + 1 ...
  colors[182] = 0  # ... and "unlabeled" black.
  return ClassTable("coco_stuff", _COCO_STUFF_NAMES + ("unlabeled",), colors,
                    unlabeled_class=182)


def _cityscapes() -> ClassTable:
  return ClassTable("cityscapes", tuple(n for n, _ in _CITYSCAPES),
                    np.array([c for _, c in _CITYSCAPES], np.uint8), unlabeled_class=0)


def _celebamask_hq() -> ClassTable:
  return ClassTable("celebamask_hq", tuple(n for n, _ in _CELEBAMASK_HQ),
                    np.array([c for _, c in _CELEBAMASK_HQ], np.uint8), unlabeled_class=None)


# The procedural dataset's classes (scdm_jax.data.procedural draws with these colours).
PROCEDURAL_CLASSES = (
    ("sky", (110, 170, 235)),
    ("mountain", (120, 100, 90)),
    ("grass", (70, 150, 50)),
    ("water", (30, 80, 170)),
    ("sand", (220, 200, 140)),
    ("tree", (20, 90, 30)),
    ("rock", (130, 130, 130)),
    ("building", (180, 70, 50)),
    ("unlabeled", (0, 0, 0)),
)


def _procedural() -> ClassTable:
  return ClassTable("procedural", tuple(n for n, _ in PROCEDURAL_CLASSES),
                    np.array([c for _, c in PROCEDURAL_CLASSES], np.uint8),
                    unlabeled_class=len(PROCEDURAL_CLASSES) - 1)


_BUILTIN = {"ade20k": _ade20k, "coco_stuff": _coco_stuff, "cityscapes": _cityscapes,
            "celebamask_hq": _celebamask_hq, "procedural": _procedural}

BUILTIN_NAMES = tuple(_BUILTIN)


def get_class_table(name: str) -> ClassTable:
  """Returns the built-in class table of a dataset, or loads a custom JSON table.

  Args:
    name: one of `BUILTIN_NAMES`, or the path of a JSON file (see `load_class_table_json`).
  """
  if name in _BUILTIN:
    return _BUILTIN[name]()
  if name.endswith(".json") or os.path.exists(name):
    return load_class_table_json(name)
  raise ValueError(f"unknown dataset/palette {name!r}: use one of {', '.join(BUILTIN_NAMES)} "
                   "or the path of a palette JSON file")


def colour_ties(table: ClassTable) -> list[tuple[tuple[int, int, int], tuple[int, ...]]]:
  """Colours that several classes share, as (rgb, class ids ascending).

  An RGB map cannot tell such classes apart: a pixel of the colour becomes the lowest id
  (ADE20K: road and skyscraper are both (140, 140, 140); Cityscapes: ids 0-4 are black).
  """
  groups: dict[tuple[int, int, int], list[int]] = {}
  for i, c in enumerate(np.asarray(table.colors)):
    groups.setdefault(tuple(int(v) for v in c), []).append(i)
  return [(c, tuple(ids)) for c, ids in groups.items() if len(ids) > 1]


def _parse_class_table(obj, path: str):
  """(colours (K, 3) int64, names, unlabeled class) of a palette JSON object."""
  unlabeled = None
  if isinstance(obj, list):
    colors, names = obj, None
  elif isinstance(obj, dict) and "classes" in obj:
    colors = [c.get("color") for c in obj["classes"]]
    names = [c.get("name", f"class_{i}") for i, c in enumerate(obj["classes"])]
    unlabeled = obj.get("unlabeled_class")
  elif isinstance(obj, dict) and "colors" in obj:
    colors, names = obj["colors"], obj.get("names")
    unlabeled = obj.get("unlabeled_class")
  else:
    raise ValueError(f"palette file {path}: expected a list of [r, g, b], or an object with "
                     "'colors' (and optional 'names') or 'classes' entries")
  try:
    arr = np.asarray(colors, dtype=np.int64)
  except (TypeError, ValueError) as e:
    raise ValueError(f"palette file {path}: colours must be [r, g, b] integer triples") from e
  if arr.ndim != 2 or arr.shape[1] != 3 or len(arr) == 0:
    raise ValueError(f"palette file {path}: colours must be a non-empty list of [r, g, b] "
                     f"triples, got an array of shape {arr.shape}")
  if arr.min() < 0 or arr.max() > 255:
    raise ValueError(f"palette file {path}: colour values must lie in 0..255, "
                     f"got {arr.min()}..{arr.max()}")
  if names is None:
    names = [f"class_{i}" for i in range(len(arr))]
  if len(names) != len(arr):
    raise ValueError(f"palette file {path}: {len(names)} names but {len(arr)} colours")
  if unlabeled is not None and (not isinstance(unlabeled, int) or isinstance(unlabeled, bool)
                                or not 0 <= unlabeled < len(arr)):
    raise ValueError(f"palette file {path}: unlabeled_class {unlabeled} is not a class id "
                     f"(0..{len(arr) - 1})")
  return arr, names, unlabeled


def load_class_table_json(path: str) -> ClassTable:
  """Loads a custom class table.

  Accepted JSON forms (the index of an entry is its class id):
    {"names": [...], "colors": [[r, g, b], ...], "unlabeled_class": null}
    {"classes": [{"name": "sky", "color": [70, 130, 180]}, ...]}
    [[r, g, b], ...]                       (colours only; names become "class_<i>")
  An optional "unlabeled_class" (int) names the class noisy-label corruption writes.
  """
  if not os.path.exists(path):
    raise FileNotFoundError(f"palette file {path} does not exist")
  try:
    with open(path, encoding="utf-8") as f:
      obj = json.load(f)
  except (json.JSONDecodeError, UnicodeDecodeError) as e:
    raise ValueError(f"palette file {path} is not valid JSON: {e}") from None
  try:
    arr, names, unlabeled = _parse_class_table(obj, path)
  except (AttributeError, TypeError, KeyError) as e:
    # A well-formed JSON of the wrong shape (e.g. "classes": null, a class that is a list).
    raise ValueError(f"palette file {path}: unexpected structure ({type(e).__name__}: {e}); "
                     "see docs/data.md for the accepted forms") from None
  stem = os.path.splitext(os.path.basename(path))[0]
  return ClassTable(stem, tuple(map(str, names)), arr.astype(np.uint8),
                    None if unlabeled is None else int(unlabeled))


def save_class_table_json(table: ClassTable, path: str) -> None:
  """Writes a table as JSON (the palette legend users can paint with in any editor)."""
  atomic.write_json(path, table.to_json())
