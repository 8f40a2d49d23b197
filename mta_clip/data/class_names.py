"""Class names and palettes of the built-in datasets (facts of the datasets, in label order).

``*_CLASSES`` are display names (``stuff_classes``: evaluator tables, visualization); ADE20k uses
the synonym lists of the official objectInfo150 table (the same strings as Detectron2's list).
``*_PROMPT_CLASSES`` are the short names that fit the CLIP prompt slot (``prompt_classes``).
``*_COLORS`` are RGB palettes: the standard ADE20k and Cityscapes colors.
:func:`class_names_from_metadata` reads the prompt class names of the datasets a config names.
"""

from typing import List, Tuple

from detectron2.data import MetadataCatalog

__all__ = [
    "class_names_from_metadata",
    "ADE20K_CLASSES",
    "ADE20K_PROMPT_CLASSES",
    "ADE20K_COLORS",
    "CITYSCAPES_CLASSES",
    "CITYSCAPES_PROMPT_CLASSES",
    "CITYSCAPES_COLORS",
]

# ADE20k SceneParsing-150 display names; label v (1..150 in raw files) is class v - 1.
ADE20K_CLASSES = (
    "wall",  # 0
    "building",  # 1
    "sky",  # 2
    "floor",  # 3
    "tree",  # 4
    "ceiling",  # 5
    "road, route",  # 6
    "bed",  # 7
    "window",  # 8
    "grass",  # 9
    "cabinet",  # 10
    "sidewalk, pavement",  # 11
    "person",  # 12
    "earth, ground",  # 13
    "door",  # 14
    "table",  # 15
    "mountain, mount",  # 16
    "plant",  # 17
    "curtain",  # 18
    "chair",  # 19
    "car",  # 20
    "water",  # 21
    "painting, picture",  # 22
    "sofa",  # 23
    "shelf",  # 24
    "house",  # 25
    "sea",  # 26
    "mirror",  # 27
    "rug",  # 28
    "field",  # 29
    "armchair",  # 30
    "seat",  # 31
    "fence",  # 32
    "desk",  # 33
    "rock, stone",  # 34
    "wardrobe, closet, press",  # 35
    "lamp",  # 36
    "tub",  # 37
    "rail",  # 38
    "cushion",  # 39
    "base, pedestal, stand",  # 40
    "box",  # 41
    "column, pillar",  # 42
    "signboard, sign",  # 43
    "chest of drawers, chest, bureau, dresser",  # 44
    "counter",  # 45
    "sand",  # 46
    "sink",  # 47
    "skyscraper",  # 48
    "fireplace",  # 49
    "refrigerator, icebox",  # 50
    "grandstand, covered stand",  # 51
    "path",  # 52
    "stairs",  # 53
    "runway",  # 54
    "case, display case, showcase, vitrine",  # 55
    "pool table, billiard table, snooker table",  # 56
    "pillow",  # 57
    "screen door, screen",  # 58
    "stairway, staircase",  # 59
    "river",  # 60
    "bridge, span",  # 61
    "bookcase",  # 62
    "blind, screen",  # 63
    "coffee table",  # 64
    "toilet, can, commode, crapper, pot, potty, stool, throne",  # 65
    "flower",  # 66
    "book",  # 67
    "hill",  # 68
    "bench",  # 69
    "countertop",  # 70
    "stove",  # 71
    "palm, palm tree",  # 72
    "kitchen island",  # 73
    "computer",  # 74
    "swivel chair",  # 75
    "boat",  # 76
    "bar",  # 77
    "arcade machine",  # 78
    "hovel, hut, hutch, shack, shanty",  # 79
    "bus",  # 80
    "towel",  # 81
    "light",  # 82
    "truck",  # 83
    "tower",  # 84
    "chandelier",  # 85
    "awning, sunshade, sunblind",  # 86
    "street lamp",  # 87
    "booth",  # 88
    "tv",  # 89
    "plane",  # 90
    "dirt track",  # 91
    "clothes",  # 92
    "pole",  # 93
    "land, ground, soil",  # 94
    "bannister, banister, balustrade, balusters, handrail",  # 95
    "escalator, moving staircase, moving stairway",  # 96
    "ottoman, pouf, pouffe, puff, hassock",  # 97
    "bottle",  # 98
    "buffet, counter, sideboard",  # 99
    "poster, posting, placard, notice, bill, card",  # 100
    "stage",  # 101
    "van",  # 102
    "ship",  # 103
    "fountain",  # 104
    "conveyer belt, conveyor belt, conveyer, conveyor, transporter",  # 105
    "canopy",  # 106
    "washer, automatic washer, washing machine",  # 107
    "plaything, toy",  # 108
    "pool",  # 109
    "stool",  # 110
    "barrel, cask",  # 111
    "basket, handbasket",  # 112
    "falls",  # 113
    "tent",  # 114
    "bag",  # 115
    "minibike, motorbike",  # 116
    "cradle",  # 117
    "oven",  # 118
    "ball",  # 119
    "food, solid food",  # 120
    "step, stair",  # 121
    "tank, storage tank",  # 122
    "trade name",  # 123
    "microwave",  # 124
    "pot",  # 125
    "animal",  # 126
    "bicycle",  # 127
    "lake",  # 128
    "dishwasher",  # 129
    "screen",  # 130
    "blanket, cover",  # 131
    "sculpture",  # 132
    "hood, exhaust hood",  # 133
    "sconce",  # 134
    "vase",  # 135
    "traffic light",  # 136
    "tray",  # 137
    "trash can",  # 138
    "fan",  # 139
    "pier",  # 140
    "crt screen",  # 141
    "plate",  # 142
    "monitor",  # 143
    "bulletin board",  # 144
    "shower",  # 145
    "radiator",  # 146
    "glass, drinking glass",  # 147
    "clock",  # 148
    "flag",  # 149
)

# ADE20k short names for text prompts, same order.
ADE20K_PROMPT_CLASSES = (
    "wall",  # 0
    "building",  # 1
    "sky",  # 2
    "floor",  # 3
    "tree",  # 4
    "ceiling",  # 5
    "road",  # 6
    "bed",  # 7
    "windowpane",  # 8
    "grass",  # 9
    "cabinet",  # 10
    "sidewalk",  # 11
    "person",  # 12
    "earth",  # 13
    "door",  # 14
    "table",  # 15
    "mountain",  # 16
    "plant",  # 17
    "curtain",  # 18
    "chair",  # 19
    "car",  # 20
    "water",  # 21
    "painting",  # 22
    "sofa",  # 23
    "shelf",  # 24
    "house",  # 25
    "sea",  # 26
    "mirror",  # 27
    "rug",  # 28
    "field",  # 29
    "armchair",  # 30
    "seat",  # 31
    "fence",  # 32
    "desk",  # 33
    "rock",  # 34
    "wardrobe",  # 35
    "lamp",  # 36
    "bathtub",  # 37
    "railing",  # 38
    "cushion",  # 39
    "base",  # 40
    "box",  # 41
    "column",  # 42
    "signboard",  # 43
    "chest of drawers",  # 44
    "counter",  # 45
    "sand",  # 46
    "sink",  # 47
    "skyscraper",  # 48
    "fireplace",  # 49
    "refrigerator",  # 50
    "grandstand",  # 51
    "path",  # 52
    "stairs",  # 53
    "runway",  # 54
    "case",  # 55
    "pool table",  # 56
    "pillow",  # 57
    "screen door",  # 58
    "stairway",  # 59
    "river",  # 60
    "bridge",  # 61
    "bookcase",  # 62
    "blind",  # 63
    "coffee table",  # 64
    "toilet",  # 65
    "flower",  # 66
    "book",  # 67
    "hill",  # 68
    "bench",  # 69
    "countertop",  # 70
    "stove",  # 71
    "palm",  # 72
    "kitchen island",  # 73
    "computer",  # 74
    "swivel chair",  # 75
    "boat",  # 76
    "bar",  # 77
    "arcade machine",  # 78
    "hovel",  # 79
    "bus",  # 80
    "towel",  # 81
    "light",  # 82
    "truck",  # 83
    "tower",  # 84
    "chandelier",  # 85
    "awning",  # 86
    "streetlight",  # 87
    "booth",  # 88
    "television receiver",  # 89
    "airplane",  # 90
    "dirt track",  # 91
    "apparel",  # 92
    "pole",  # 93
    "land",  # 94
    "bannister",  # 95
    "escalator",  # 96
    "ottoman",  # 97
    "bottle",  # 98
    "buffet",  # 99
    "poster",  # 100
    "stage",  # 101
    "van",  # 102
    "ship",  # 103
    "fountain",  # 104
    "conveyer belt",  # 105
    "canopy",  # 106
    "washer",  # 107
    "plaything",  # 108
    "swimming pool",  # 109
    "stool",  # 110
    "barrel",  # 111
    "basket",  # 112
    "waterfall",  # 113
    "tent",  # 114
    "bag",  # 115
    "minibike",  # 116
    "cradle",  # 117
    "oven",  # 118
    "ball",  # 119
    "food",  # 120
    "step",  # 121
    "tank",  # 122
    "trade name",  # 123
    "microwave",  # 124
    "pot",  # 125
    "animal",  # 126
    "bicycle",  # 127
    "lake",  # 128
    "dishwasher",  # 129
    "screen",  # 130
    "blanket",  # 131
    "sculpture",  # 132
    "hood",  # 133
    "sconce",  # 134
    "vase",  # 135
    "traffic light",  # 136
    "tray",  # 137
    "ashcan",  # 138
    "fan",  # 139
    "pier",  # 140
    "crt screen",  # 141
    "plate",  # 142
    "monitor",  # 143
    "bulletin board",  # 144
    "shower",  # 145
    "radiator",  # 146
    "glass",  # 147
    "clock",  # 148
    "flag",  # 149
)

# ADE20k standard palette (RGB), same order.
ADE20K_COLORS = (
    (120, 120, 120),  # 0
    (180, 120, 120),  # 1
    (6, 230, 230),  # 2
    (80, 50, 50),  # 3
    (4, 200, 3),  # 4
    (120, 120, 80),  # 5
    (140, 140, 140),  # 6
    (204, 5, 255),  # 7
    (230, 230, 230),  # 8
    (4, 250, 7),  # 9
    (224, 5, 255),  # 10
    (235, 255, 7),  # 11
    (150, 5, 61),  # 12
    (120, 120, 70),  # 13
    (8, 255, 51),  # 14
    (255, 6, 82),  # 15
    (143, 255, 140),  # 16
    (204, 255, 4),  # 17
    (255, 51, 7),  # 18
    (204, 70, 3),  # 19
    (0, 102, 200),  # 20
    (61, 230, 250),  # 21
    (255, 6, 51),  # 22
    (11, 102, 255),  # 23
    (255, 7, 71),  # 24
    (255, 9, 224),  # 25
    (9, 7, 230),  # 26
    (220, 220, 220),  # 27
    (255, 9, 92),  # 28
    (112, 9, 255),  # 29
    (8, 255, 214),  # 30
    (7, 255, 224),  # 31
    (255, 184, 6),  # 32
    (10, 255, 71),  # 33
    (255, 41, 10),  # 34
    (7, 255, 255),  # 35
    (224, 255, 8),  # 36
    (102, 8, 255),  # 37
    (255, 61, 6),  # 38
    (255, 194, 7),  # 39
    (255, 122, 8),  # 40
    (0, 255, 20),  # 41
    (255, 8, 41),  # 42
    (255, 5, 153),  # 43
    (6, 51, 255),  # 44
    (235, 12, 255),  # 45
    (160, 150, 20),  # 46
    (0, 163, 255),  # 47
    (140, 140, 140),  # 48
    (250, 10, 15),  # 49
    (20, 255, 0),  # 50
    (31, 255, 0),  # 51
    (255, 31, 0),  # 52
    (255, 224, 0),  # 53
    (153, 255, 0),  # 54
    (0, 0, 255),  # 55
    (255, 71, 0),  # 56
    (0, 235, 255),  # 57
    (0, 173, 255),  # 58
    (31, 0, 255),  # 59
    (11, 200, 200),  # 60
    (255, 82, 0),  # 61
    (0, 255, 245),  # 62
    (0, 61, 255),  # 63
    (0, 255, 112),  # 64
    (0, 255, 133),  # 65
    (255, 0, 0),  # 66
    (255, 163, 0),  # 67
    (255, 102, 0),  # 68
    (194, 255, 0),  # 69
    (0, 143, 255),  # 70
    (51, 255, 0),  # 71
    (0, 82, 255),  # 72
    (0, 255, 41),  # 73
    (0, 255, 173),  # 74
    (10, 0, 255),  # 75
    (173, 255, 0),  # 76
    (0, 255, 153),  # 77
    (255, 92, 0),  # 78
    (255, 0, 255),  # 79
    (255, 0, 245),  # 80
    (255, 0, 102),  # 81
    (255, 173, 0),  # 82
    (255, 0, 20),  # 83
    (255, 184, 184),  # 84
    (0, 31, 255),  # 85
    (0, 255, 61),  # 86
    (0, 71, 255),  # 87
    (255, 0, 204),  # 88
    (0, 255, 194),  # 89
    (0, 255, 82),  # 90
    (0, 10, 255),  # 91
    (0, 112, 255),  # 92
    (51, 0, 255),  # 93
    (0, 194, 255),  # 94
    (0, 122, 255),  # 95
    (0, 255, 163),  # 96
    (255, 153, 0),  # 97
    (0, 255, 10),  # 98
    (255, 112, 0),  # 99
    (143, 255, 0),  # 100
    (82, 0, 255),  # 101
    (163, 255, 0),  # 102
    (255, 235, 0),  # 103
    (8, 184, 170),  # 104
    (133, 0, 255),  # 105
    (0, 255, 92),  # 106
    (184, 0, 255),  # 107
    (255, 0, 31),  # 108
    (0, 184, 255),  # 109
    (0, 214, 255),  # 110
    (255, 0, 112),  # 111
    (92, 255, 0),  # 112
    (0, 224, 255),  # 113
    (112, 224, 255),  # 114
    (70, 184, 160),  # 115
    (163, 0, 255),  # 116
    (153, 0, 255),  # 117
    (71, 255, 0),  # 118
    (255, 0, 163),  # 119
    (255, 204, 0),  # 120
    (255, 0, 143),  # 121
    (0, 255, 235),  # 122
    (133, 255, 0),  # 123
    (255, 0, 235),  # 124
    (245, 0, 255),  # 125
    (255, 0, 122),  # 126
    (255, 245, 0),  # 127
    (10, 190, 212),  # 128
    (214, 255, 0),  # 129
    (0, 204, 255),  # 130
    (20, 0, 255),  # 131
    (255, 255, 0),  # 132
    (0, 153, 255),  # 133
    (0, 41, 255),  # 134
    (0, 255, 204),  # 135
    (41, 0, 255),  # 136
    (41, 255, 0),  # 137
    (173, 0, 255),  # 138
    (0, 245, 255),  # 139
    (71, 0, 255),  # 140
    (122, 0, 255),  # 141
    (0, 255, 184),  # 142
    (0, 92, 255),  # 143
    (184, 255, 0),  # 144
    (0, 133, 255),  # 145
    (255, 214, 0),  # 146
    (25, 194, 194),  # 147
    (102, 255, 0),  # 148
    (92, 0, 255),  # 149
)

# Cityscapes 19 evaluation classes in trainId order (0..18).
CITYSCAPES_CLASSES = (
    "road",  # 0
    "sidewalk",  # 1
    "building",  # 2
    "wall",  # 3
    "fence",  # 4
    "pole",  # 5
    "traffic light",  # 6
    "traffic sign",  # 7
    "vegetation",  # 8
    "terrain",  # 9
    "sky",  # 10
    "person",  # 11
    "rider",  # 12
    "car",  # 13
    "truck",  # 14
    "bus",  # 15
    "train",  # 16
    "motorcycle",  # 17
    "bicycle",  # 18
)

# Cityscapes names are short already: the prompt names are the display names.
CITYSCAPES_PROMPT_CLASSES: Tuple[str, ...] = CITYSCAPES_CLASSES

# Cityscapes standard palette (RGB), trainId order.
CITYSCAPES_COLORS = (
    (128, 64, 128),  # 0
    (244, 35, 232),  # 1
    (70, 70, 70),  # 2
    (102, 102, 156),  # 3
    (190, 153, 153),  # 4
    (153, 153, 153),  # 5
    (250, 170, 30),  # 6
    (220, 220, 0),  # 7
    (107, 142, 35),  # 8
    (152, 251, 152),  # 9
    (70, 130, 180),  # 10
    (220, 20, 60),  # 11
    (255, 0, 0),  # 12
    (0, 0, 142),  # 13
    (0, 0, 70),  # 14
    (0, 60, 100),  # 15
    (0, 80, 100),  # 16
    (0, 0, 230),  # 17
    (119, 11, 32),  # 18
)


def class_names_from_metadata(cfg) -> List[str]:
    """Prompt class names of the training datasets: metadata ``MODEL.CLIP.TEXT.CLASS_NAMES_KEY``
    (default ``prompt_classes``), falling back to ``stuff_classes``."""
    key = cfg.MODEL.CLIP.TEXT.CLASS_NAMES_KEY
    datasets = list(cfg.DATASETS.TRAIN) or list(cfg.DATASETS.TEST)
    if not datasets:
        raise ValueError("no dataset in DATASETS.TRAIN / DATASETS.TEST to read prompt class names from")
    found = None
    for name in datasets:
        meta = MetadataCatalog.get(name)
        names = meta.get(key, None)
        if names is None:
            names = meta.get("stuff_classes", None)
        if names is None:
            raise ValueError(
                f"dataset '{name}' metadata has neither '{key}' (MODEL.CLIP.TEXT.CLASS_NAMES_KEY) nor "
                f"'stuff_classes': cannot build the CLIP prompts"
            )
        if found is not None and list(names) != found:
            raise ValueError(f"datasets {datasets} have different prompt class names; the text encoder needs one list")
        found = list(names)
    return found
