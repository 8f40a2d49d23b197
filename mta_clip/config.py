"""Every config key this project adds to Detectron2's defaults, with its real default.

YAML files only override these. Keys shared with the Mask2Former project keep Mask2Former's names
(``MODEL.MASK_FORMER.*``, ``MODEL.SEM_SEG_HEAD.*``), so its recipes read the same here.

Keys kept only so that Mask2Former / Detectron2 YAML files load say "not used" in their comment.
A key that was renamed stays in ``RENAMED_KEYS``: a YAML file or an override that still uses the
old name is an error naming the new one.
"""

import logging
from typing import Dict, Mapping, Optional, Sequence, Tuple, TypeVar, Union

import torch
from detectron2.config import CfgNode as CN
from detectron2.config import get_cfg

__all__ = ["RENAMED_KEYS", "add_mtaclip_config", "choice", "setup_cfg"]

logger = logging.getLogger(__name__)
T = TypeVar("T")

# Old key -> new key, or (key that now holds the choice, what to write instead) for a removed key.
# "CHECKPOINT" means only the trainer's files: CLIP's files are "weights", activation recomputation
# is "recompute". One switch per choice: the model is chosen by MODEL.META_ARCHITECTURE alone.
RENAMED_KEYS: Dict[str, Union[str, Tuple[str, str]]] = {
    "MODEL.CLIP.CHECKPOINT": "MODEL.CLIP.WEIGHTS",
    "MODEL.CLIP.TEXT.CHECKPOINT_BLOCKS": "MODEL.CLIP.TEXT.RECOMPUTE_BLOCKS",
    "MODEL.MTA_CLIP.CHECKPOINT_SIMILARITY": "MODEL.MTA_CLIP.RECOMPUTE_SIMILARITY",
    "MODEL.MTA_CLIP.ENABLED": (
        "MODEL.META_ARCHITECTURE",
        "ENABLED False was the baseline: MODEL.META_ARCHITECTURE SemanticMask2Former with "
        "MODEL.MASK_FORMER.TRANSFORMER_DECODER_NAME MaskedDecoder.",
    ),
    "MODEL.MTA_CLIP.USE_TEXT_QUERIES": (
        "MODEL.META_ARCHITECTURE",
        "MTACLIP always has text queries; the model without them is MODEL.META_ARCHITECTURE SemanticMask2Former.",
    ),
    "MODEL.MTA_CLIP.TEXT_DIM": (
        "MODEL.CLIP.WEIGHTS",
        "the text width D comes from the CLIP text encoder (MODEL.CLIP.WEIGHTS, or MODEL.CLIP.MODEL_NAME).",
    ),
}


def add_mtaclip_config(cfg: CN) -> CN:
    """Adds all project keys to ``cfg`` in place and returns it."""
    _add_baseline_config(cfg)
    _add_data_config(cfg)
    _add_solver_config(cfg)
    _add_test_config(cfg)
    _add_clip_config(cfg)
    _add_imagenet_backbone_config(cfg)
    _add_mta_clip_config(cfg)
    _add_logging_config(cfg)
    for old, new in RENAMED_KEYS.items():
        if not cfg.key_is_renamed(old):
            cfg.register_renamed_key(old, *((new,) if isinstance(new, str) else new))
    return cfg


def choice(options: Union[Sequence[str], Mapping[str, T]], value: str, key: str) -> Union[str, T]:
    """The one check of a configured choice: ``value`` looked up case-insensitively in ``options``.

    ``options`` are lowercase names, or a mapping name -> implementation (then the implementation
    is returned, e.g. a loss function); a name returns its lowercase form. Anything else is a
    ``ValueError`` naming ``key`` (the config key, or the argument) and the allowed names.
    """
    name = str(value).lower()
    if name not in options:
        raise ValueError(f"{key}: got {value!r}, expected one of {list(options)}")
    return options[name] if isinstance(options, Mapping) else name


def setup_cfg(
    config_file: str,
    opts: Optional[Sequence[str]] = None,
    dataset_files: Sequence[str] = (),
    imports: Sequence[str] = (),
) -> CN:
    """Detectron2 defaults + this project's keys, then the YAML, then ``opts`` overrides (not frozen);
    then the dataset files (``DATASETS.FILES`` + ``dataset_files``) and ``imports`` are registered
    and ``MODEL.SEM_SEG_HEAD.NUM_CLASSES`` follows the training data (``prepare_datasets``).

    A key the config does not have (or a renamed one) is a ``KeyError`` naming the file and the key;
    a ``!!python/...`` tag in the file or a ``_BASE_`` is a ``ValueError`` naming file and tag.
    """
    import yaml

    from .data.dataset_file import prepare_datasets
    from .safe_yaml import unsafe_tag_error

    cfg = get_cfg()
    add_mtaclip_config(cfg)
    if config_file:
        try:
            cfg.merge_from_file(config_file, allow_unsafe=False)
        except KeyError as e:
            raise KeyError(f"{config_file}: {e.args[0] if e.args else e}") from e
        except yaml.constructor.ConstructorError as e:
            raise unsafe_tag_error(e, "config file") from None
    cfg.merge_from_list(list(opts or []))
    prepare_datasets(cfg, dataset_files, imports)
    if cfg.MODEL.DEVICE.startswith("cuda") and not torch.cuda.is_available():
        logger.warning("MODEL.DEVICE=%s but CUDA is not available: using the CPU", cfg.MODEL.DEVICE)
        cfg.MODEL.DEVICE = "cpu"
    return cfg


def _add_baseline_config(cfg: CN) -> None:
    """Mask2Former semantic-segmentation model (pixel decoder, masked decoder, criterion)."""
    cfg.MODEL.MASK_FORMER = CN()
    mf = cfg.MODEL.MASK_FORMER
    mf.TRANSFORMER_DECODER_NAME = "MaskedDecoder"  # registry name in mta_clip TRANSFORMER_DECODER_REGISTRY
    mf.TRANSFORMER_IN_FEATURE = "multi_scale_pixel_decoder"  # decoder reads the pixel decoder's memories
    mf.DEEP_SUPERVISION = True  # supervise every intermediate prediction
    mf.NO_OBJECT_WEIGHT = 0.1  # CE weight of the no-object class
    mf.CLASS_WEIGHT = 2.0  # lambda of the classification CE (loss and matching cost)
    mf.DICE_WEIGHT = 5.0  # weight of the dice loss (loss and matching cost)
    mf.MASK_WEIGHT = 5.0  # weight of the sigmoid BCE mask loss (loss and matching cost)
    mf.NHEADS = 8  # attention heads in the transformer decoder
    mf.DROPOUT = 0.0  # dropout in the transformer decoder
    mf.DIM_FEEDFORWARD = 2048  # FFN width of the transformer decoder
    mf.ENC_LAYERS = 0  # not used: the masked decoder has no encoder layers (Mask2Former YAML compatibility)
    mf.DEC_LAYERS = 10  # predictions = decoder layers + 1 (the one made before the first layer)
    mf.PRE_NORM = False  # pre-norm instead of post-norm decoder layers
    mf.ENFORCE_INPUT_PROJ = False  # always project memories to hidden dim, even if sizes match
    mf.HIDDEN_DIM = 256  # query / memory width of the decoder
    mf.NUM_OBJECT_QUERIES = 100  # N mask queries
    mf.SIZE_DIVISIBILITY = 32  # pad batched images to a multiple of this (model side)
    mf.TRAIN_NUM_POINTS = 112 * 112  # points sampled per mask for the mask losses and costs
    mf.OVERSAMPLE_RATIO = 3.0  # oversampling for importance sampling of points
    mf.IMPORTANCE_SAMPLE_RATIO = 0.75  # fraction of points taken from the most uncertain ones
    mf.MASK_LOSS_NORMALIZER = "num_masks"  # mask/dice divisor: "num_masks" (Mask2Former), "class_weight_sum" (authors)
    mf.DECODER_LAYER_INIT = "xavier_uniform"  # decoder attention/FFN weight init; authors: "xavier_normal"
    mf.SUPERVISE_INITIAL_PREDICTION = True  # supervise the prediction before the first layer (MTA-CLIP authors: False)
    mf.TEST = CN()
    mf.TEST.SEMANTIC_ON = True  # not used: the output is always "sem_seg" (Mask2Former YAML compatibility)
    mf.TEST.INSTANCE_ON = False  # not used: semantic segmentation only (Mask2Former YAML compatibility)
    mf.TEST.PANOPTIC_ON = False  # not used: semantic segmentation only (Mask2Former YAML compatibility)
    mf.TEST.OBJECT_MASK_THRESHOLD = 0.8  # not used: instance / panoptic inference (Mask2Former YAML compatibility)
    mf.TEST.OVERLAP_THRESHOLD = 0.8  # not used: instance / panoptic inference (Mask2Former YAML compatibility)
    mf.TEST.SEM_SEG_POSTPROCESSING_BEFORE_INFERENCE = False  # resize masks to image before combining

    sh = cfg.MODEL.SEM_SEG_HEAD
    sh.NAME = "MaskedSemSegHead"  # our head: pixel decoder + transformer decoder
    sh.MASK_DIM = 256  # channels of mask_features
    sh.PIXEL_DECODER_NAME = "MSDeformAttnPixelDecoder"  # registry name in mta_clip PIXEL_DECODER_REGISTRY
    sh.TRANSFORMER_ENC_LAYERS = 6  # deformable encoder layers in the pixel decoder
    sh.DEFORMABLE_TRANSFORMER_ENCODER_IN_FEATURES = ["res3", "res4", "res5"]  # encoder input levels
    sh.DEFORMABLE_TRANSFORMER_ENCODER_N_POINTS = 4  # sampling points per head and level
    sh.DEFORMABLE_TRANSFORMER_ENCODER_N_HEADS = 8  # deformable attention heads
    sh.DEFORMABLE_TRANSFORMER_ENCODER_DIM_FEEDFORWARD = 1024  # encoder FFN width
    sh.COMMON_STRIDE = 4  # stride of mask_features
    sh.IN_FEATURES = ["res2", "res3", "res4", "res5"]  # backbone features the head reads
    sh.NUM_CLASSES = 0  # C; 0 = the class count of the DATASETS.TRAIN datasets (a set value must equal it)
    sh.IGNORE_VALUE = 255  # label value ignored by the loss and the evaluator
    sh.NORM = "GN"  # norm of the pixel decoder convolutions
    sh.CONVS_DIM = 256  # pixel decoder width
    sh.LOSS_WEIGHT = 1.0  # not used: loss weights are MASK_FORMER.*_WEIGHT (Detectron2 semantic-head key)

    cfg.MODEL.FIND_UNUSED_PARAMETERS = False  # DDP find_unused_parameters (needed if a branch is skipped)
    cfg.MODEL.RESNETS.STEM_TYPE = "basic"  # not used: DeepLab stem type (Mask2Former YAML compatibility)
    cfg.MODEL.RESNETS.RES5_MULTI_GRID = [1, 1, 1]  # not used: DeepLab res5 dilations (Mask2Former YAML compatibility)


def _add_data_config(cfg: CN) -> None:
    """Training data pipeline (mapper, toy dataset)."""
    cfg.INPUT.DATASET_MAPPER_NAME = "mask_former_semantic"  # the semantic mapper of this project
    cfg.INPUT.COLOR_AUG_SSD = True  # photometric distortion (SSD style)
    cfg.INPUT.CROP.SINGLE_CATEGORY_MAX_AREA = 1.0  # reject crops where one class exceeds this ratio
    cfg.INPUT.SIZE_DIVISIBILITY = -1  # pad image (PAD_VALUE) and label (ignore) to a multiple of this; -1 = off
    cfg.INPUT.PAD_VALUE = 128  # image pad value (0-255) for SIZE_DIVISIBILITY, before normalization (Mask2Former: 128)
    cfg.INPUT.PAD_WITH_PIXEL_MEAN = False  # pad with MODEL.PIXEL_MEAN instead (authors: 0 after normalization)
    cfg.INPUT.COLOR_AUG_SSD_TRUNCATE = False  # photometric steps each truncate to uint8 (authors' mmseg) vs round once
    cfg.INPUT.TRAIN_RESIZE = "shortest_edge"  # shortest_edge (MIN/MAX_SIZE_TRAIN, PIL) or ratio_range (mmseg, cv2)
    cfg.INPUT.TRAIN_RESIZE_SCALE = (2048, 512)  # ratio_range: (long, short) scale multiplied by the random ratio
    cfg.INPUT.TRAIN_RESIZE_RATIO_RANGE = (0.5, 2.0)  # ratio_range: the ratio is uniform in [low, high)
    cfg.INPUT.IMAGE_SIZE = 1024  # not used: large-scale jitter of instance recipes (Mask2Former YAML compatibility)
    cfg.INPUT.MIN_SCALE = 0.1  # not used: large-scale jitter of instance recipes (Mask2Former YAML compatibility)
    cfg.INPUT.MAX_SCALE = 2.0  # not used: large-scale jitter of instance recipes (Mask2Former YAML compatibility)
    cfg.DATASETS.FILES = []  # dataset files (YAML/JSON, see mta_clip/data/dataset_file.py) to register first
    cfg.DATALOADER.EXACT_RESUME = True  # batches depend on (seed, position) only: --resume sees the same batches


def _add_solver_config(cfg: CN) -> None:
    """Optimizer and schedule keys beyond Detectron2's."""
    cfg.SOLVER.OPTIMIZER = "ADAMW"  # "ADAMW" or "SGD"
    cfg.SOLVER.BACKBONE_MULTIPLIER = 0.1  # lr multiplier of backbone parameters
    cfg.SOLVER.POLY_LR_POWER = 0.9  # power of the poly schedule
    cfg.SOLVER.POLY_LR_CONSTANT_ENDING = 0.0  # constant lr factor after this point (0 = off)
    cfg.SOLVER.POLY_LR_AFTER_WARMUP = "multiply"  # "multiply": warm-up x poly; "restart" (authors): poly from 1 after
    cfg.SOLVER.BACKBONE_NORM_WEIGHT_DECAY = "WEIGHT_DECAY_NORM"  # backbone norms' decay key; authors: "WEIGHT_DECAY"
    cfg.SOLVER.WEIGHT_DECAY_EMBED = 0.0  # weight decay of embedding parameters
    cfg.SOLVER.CHECKPOINT_MAX_KEEP = 0  # newest periodic model_XXXXXXX.pth kept (plus model_final, model_best); 0 = all


def _add_test_config(cfg: CN) -> None:
    """Evaluation and test-time augmentation."""
    # Detectron2 defines TEST.AUG.ENABLED (multi-scale + flip on/off) and TEST.AUG.FLIP (add the
    # horizontally flipped views); its absolute TEST.AUG.MIN_SIZES / MAX_SIZE are not used (our
    # test-time augmentation scales the test size by TEST.AUG.SCALES).
    cfg.TEST.AUG.SCALES = [0.5, 0.75, 1.0, 1.25, 1.5, 1.75]  # multi-scale factors of the test size
    cfg.TEST.AUG.SCALE_REFERENCE = "test_size"  # SCALES multiply the "test_size" or the "original" image size (authors)
    cfg.TEST.AUG.NORMALIZE = "softmax"  # per-view scores -> probabilities: "softmax"|"sum"|"none"
    cfg.TEST.EVAL_START = 0  # periodic evaluations from this completed iteration on (authors, ADE20k: 100000)
    cfg.TEST.SLIDE = CN()
    cfg.TEST.SLIDE.ENABLED = False  # sliding-window inference (also inside every multi-scale view)
    cfg.TEST.SLIDE.CROP_SIZE = [512, 512]  # window (h, w); ADE20k 512x512, Cityscapes 1024x1024
    cfg.TEST.SLIDE.STRIDE = [341, 341]  # window step (h, w); ADE20k 341, Cityscapes 683
    cfg.TEST.SLIDE.BATCH_SIZE = 1  # windows run through the model at once
    cfg.TEST.BEST_CHECKPOINT = CN()
    cfg.TEST.BEST_CHECKPOINT.ENABLED = True  # keep model_best.pth of the best evaluation
    cfg.TEST.BEST_CHECKPOINT.METRIC = "sem_seg/mIoU"  # storage key of the tracked metric
    cfg.TEST.BEST_CHECKPOINT.MODE = "max"  # "max" or "min": which direction is better
    cfg.TEST.VISUALIZE = CN()
    cfg.TEST.VISUALIZE.NUM_PANELS = 4  # image|GT|prediction|errors panels per evaluation in inference/<dataset>/panels/
    cfg.TEST.VISUALIZE.NUM_TENSORBOARD = 2  # panels logged as TensorBoard images at every training-time evaluation
    cfg.TEST.VISUALIZE.CONFUSION_MATRIX = True  # write confusion_<dataset>.csv / .png and log the most confused pairs
    cfg.TEST.STRICT_WEIGHTS = True  # eval/demo/Predictor: weights that do not fit are an error (False: load what fits)


def _add_clip_config(cfg: CN) -> None:
    """CLIP image backbones and prompt text encoder."""
    cfg.MODEL.CLIP = CN()
    clip = cfg.MODEL.CLIP
    clip.MODEL_NAME = "RN50"  # "RN50", "RN101", "ViT-B-16" or "custom:{shapes}" (model files): shapes without WEIGHTS
    clip.WEIGHTS = ""  # OpenAI's RN50.pt / RN101.pt / ViT-B-16.pt (or a state dict); "" = random init (warning)
    clip.DOWNLOAD = False  # fetch OpenAI's file to WEIGHTS (named like the official file) when it is missing
    clip.IMAGE_SIZE = [512, 512]  # (H, W) the image positional embeddings are resized to at build time

    clip.RESNET = CN()
    clip.RESNET.OUT_FEATURES = ["res2", "res3", "res4", "res5"]  # CLIPResNet outputs (+ "attnpool": dense CLIP map)
    clip.RESNET.NORM = "BN"  # every batch norm: "BN" (authors: trained, per GPU), "FrozenBN", "SyncBN", "naiveSyncBN"
    clip.RESNET.FREEZE_AT = 0  # 0 = train all; 1 = freeze stem; k >= 2 = stem + res2..res{k}

    clip.VIT = CN()
    clip.VIT.OUT_INDICES = [3, 5, 7, 11]  # 0-based blocks feeding res2, res3, res4, res5
    clip.VIT.OUT_FEATURES = ["res2", "res3", "res4", "res5"]  # CLIPViT outputs (strides 4, 8, 16, 32)
    clip.VIT.PYRAMID_NORM = "SyncBN"  # Detectron2 norm in the x4 upsampling branch of the pyramid
    clip.VIT.PYRAMID_PRE_NORM = True  # GroupNorm(1, C) before each pyramid branch (DenseCLIP / authors; False: none)
    clip.VIT.CLASS_EMBED_TWICE = True  # class token = 2 x class embedding + pos row (DenseCLIP / authors; False: CLIP)
    clip.VIT.POS_EMBED_INTERPOLATION = "bilinear"  # pos-embed resize at load + run: "bilinear" (DenseCLIP), "bicubic"
    clip.VIT.DROP_PATH_RATE = 0.1  # drop path of the last block, linear from 0 over the blocks (DenseCLIP ViT-B: 0.1)
    clip.VIT.DROP_PATH_UNIT = "token"  # "token" (DenseCLIP: one draw per token position for the batch) or "sample"

    clip.TEXT = CN()
    clip.TEXT.NUM_PROMPTS = 3  # K learned context sets shared by all classes
    clip.TEXT.N_CTX = 8  # learned context tokens per set
    clip.TEXT.CLASS_SLOT = 5  # class-slot positions: start, <= CLASS_SLOT - 2 BPE tokens, end
    clip.TEXT.CLASS_SUFFIX = ""  # text appended to each class name in the slot ("." = CoOp style)
    clip.TEXT.CONTEXT_INIT = ""  # template initializing every set (token count = N_CTX); "" = random
    clip.TEXT.CONTEXT_INIT_STD = 1.0  # std of the random truncated-normal (+-2 std) context init
    clip.TEXT.CLASS_NAMES_KEY = "prompt_classes"  # dataset metadata key of the class names (fallback: stuff_classes)
    clip.TEXT.FREEZE = True  # requires_grad=False on all CLIP text-transformer weights
    clip.TEXT.FREEZE_BY_ZERO_LR = False  # frozen tower keeps its gradients at lr 0, in the clip norm (authors)
    clip.TEXT.RECOMPUTE_BLOCKS = False  # recompute the text blocks in backward (less memory, ~1 more forward)
    clip.TEXT.COMPUTE_DTYPE = "float32"  # text tower compute: float32 (also under AMP), bfloat16 or float16 (autocast)


def _add_imagenet_backbone_config(cfg: CN) -> None:
    """ImageNet-pretrained backbones of the paper's Table 3 (left): ViT-S/16 and MiT-B4. With them, the
    MTA-CLIP text encoder still comes from MODEL.CLIP.MODEL_NAME / WEIGHTS (docs/backbones.md)."""
    cfg.MODEL.VIT = CN()
    vit = cfg.MODEL.VIT
    vit.WEIGHTS = ""  # timm-layout ImageNet ViT state dict (.pth/.bin/.safetensors); "" = random init (warning)
    vit.EMBED_DIM = 384  # token width (ViT-S: 384)
    vit.DEPTH = 12  # transformer blocks of the architecture (blocks after the last OUT_INDICES entry are not built)
    vit.NUM_HEADS = 6  # attention heads (ViT-S: 6)
    vit.PATCH_SIZE = 16  # patch side in pixels
    vit.MLP_RATIO = 4.0  # MLP hidden width / EMBED_DIM
    vit.QKV_BIAS = True  # bias in the fused qkv projection (timm / DeiT / AugReg: True)
    vit.IMAGE_SIZE = [512, 512]  # (H, W) the positional embedding is resized to when loading (timm: bicubic, antialias)
    vit.OUT_INDICES = [3, 5, 7, 11]  # 0-based blocks feeding res2, res3, res4, res5
    vit.OUT_FEATURES = ["res2", "res3", "res4", "res5"]  # ImageNetViT outputs (strides 4, 8, 16, 32)
    vit.PYRAMID_NORM = "SyncBN"  # Detectron2 norm in the x4 upsampling branch of the ViT pyramid
    vit.PYRAMID_PRE_NORM = True  # GroupNorm(1, C) before each pyramid branch, as MODEL.CLIP.VIT (False: none)
    vit.DROP_PATH_RATE = 0.1  # stochastic depth of the last block, linear from 0 (Segmenter's ViT-S recipe: 0.1)

    cfg.MODEL.MIT = CN()
    mit = cfg.MODEL.MIT
    mit.WEIGHTS = ""  # official mit_b*.pth or Hugging Face SegformerModel state dict; "" = random init (warning)
    mit.EMBED_DIMS = [64, 128, 320, 512]  # channels of res2..res5 (MiT-B4)
    mit.NUM_HEADS = [1, 2, 5, 8]  # attention heads per stage
    mit.DEPTHS = [3, 8, 27, 3]  # blocks per stage (MiT-B4)
    mit.SR_RATIOS = [8, 4, 2, 1]  # spatial reduction of keys / values per stage
    mit.MLP_RATIO = 4.0  # Mix-FFN hidden width / embed dim
    mit.DROP_PATH_RATE = 0.1  # stochastic depth of the last block, linear from 0 (SegFormer's MiT-B4: 0.1)
    mit.OUT_FEATURES = ["res2", "res3", "res4", "res5"]  # MixTransformer outputs (strides 4, 8, 16, 32)


def _add_mta_clip_config(cfg: CN) -> None:
    """MTA-CLIP: mask-text decoder, contrastive loss, prompts."""
    cfg.MODEL.MTA_CLIP = CN()
    mc = cfg.MODEL.MTA_CLIP
    mc.USE_SIM_LOSS = True  # add the mask-to-text contrastive loss L_sim (False: "text-enhanced only" ablation)
    mc.SIM_WEIGHT = 1.0  # lambda_3, weight of L_sim at every supervised prediction
    mc.NEGATIVES = "MixNeg"  # L_sim negatives: "MixNeg" (Eq. 8) or "SeparateNeg" (Eq. 9)
    mc.NONE_CLASS = True  # extra "none" class text (C' = C + 1) as the positive of unmatched queries
    mc.NONE_WEIGHT = 0.1  # weight of the unmatched queries' L_sim terms (with NONE_CLASS)
    mc.SIM_NORMALIZATION = "weighted_mean"  # "weighted_mean" (authors) or "mean_over_queries" (paper)
    mc.NONE_CLASS_NAME = "none"  # class text of the extra "none" entry (with NONE_CLASS)
    mc.TEXT_REDUCTION = "linear_ln"  # Eq. 1: "linear_ln" (authors: Linear + LayerNorm on all queries) or "mlp" (paper)
    mc.RETURN_PROJECTION = "gamma"  # Eq. 5: "gamma" (authors: t0 + gamma * LN(Linear(t_hat))) or "mlp" (paper)
    mc.GAMMA_INIT = 1e-4  # initial per-channel gamma of the "gamma" return projection
    mc.SIMILARITY = "cosine"  # Eq. 6: "cosine" (authors) or "dot" (paper)
    mc.TEMPERATURE = 1.0  # tau of Eq. 6 (authors: 1 with cosine similarity)
    mc.LEARNABLE_TEMPERATURE = False  # learn log(tau)
    mc.JOINT_SELF_ATTENTION = True  # text and mask queries attend to each other (False: separate, Tab. 4)
    mc.TEXT_ATTENTION_MASK = "predicted"  # text queries' cross-attention masks: "predicted" (authors) or "none"
    mc.TEXT_QUERY_POS = "learned"  # positional embedding of text queries: "learned" (authors) or "zero"
    mc.RECOMPUTE_SIMILARITY = True  # recompute Eqs. 5-6 in backward instead of storing them (same values, less memory)


def _add_logging_config(cfg: CN) -> None:
    """Training logs beyond Detectron2's metrics.json / TensorBoard files."""
    cfg.WANDB = CN()
    cfg.WANDB.ENABLED = False  # also log scalars and panels to Weights & Biases (needs `pip install wandb`)
    cfg.WANDB.PROJECT = "mta_clip"  # W&B project name
    cfg.WANDB.RUN_NAME = ""  # W&B run name; "" = the name of OUTPUT_DIR
    cfg.WANDB.MODE = "offline"  # W&B mode: "offline" (sync later with `wandb sync`), "online" or "disabled"
