"""MTACLIP meta-architecture: gradients, frozen text encoder, baseline equivalence, train/eval."""

import pytest
import torch
from detectron2.data import DatasetCatalog
from detectron2.modeling import build_model
from detectron2.structures import Instances

from mta_clip.data import SemanticMaskFormerMapper
from mta_clip.modeling import MTACLIP, SemanticMask2Former
from mta_clip.solver import build_optimizer
from tests.conftest import toy_cfg


def _cfg(tiny_clip_file, *opts):
    return toy_cfg("mtaclip_toy.yaml", ["MODEL.CLIP.WEIGHTS", tiny_clip_file, *opts])


def _batch(cfg, n=2):
    mapper = SemanticMaskFormerMapper(cfg, True)
    return [mapper(d) for d in DatasetCatalog.get("toy_sem_seg_train")[:n]]


def _model(cfg):
    torch.manual_seed(0)
    return build_model(cfg)


def test_gradients_reach_prompts_projections_and_queries_not_clip_text(tiny_clip_file):
    cfg = _cfg(tiny_clip_file)
    model = _model(cfg)
    assert isinstance(model, MTACLIP)
    model.train()
    losses = model(_batch(cfg))
    assert {"loss_sim", "loss_sim_0"} <= set(losses)
    sum(losses.values()).backward()
    named = dict(model.named_parameters())
    for name in [
        "text_encoder.prompt_learner.ctx",
        "sem_seg_head.predictor.text_proj.weight",
        "sem_seg_head.predictor.text_to_clip.weight",
        "sem_seg_head.predictor.text_gamma",
        "sem_seg_head.predictor.mask_to_clip.weight",
        "sem_seg_head.predictor.query_feat.weight",
        "sem_seg_head.predictor.text_query_embed.weight",
    ]:
        assert named[name].grad is not None and named[name].grad.abs().sum() > 0, name
    frozen = [n for n, p in named.items() if n.startswith("text_encoder.") and "prompt_learner" not in n]
    assert frozen and all(not named[n].requires_grad and named[n].grad is None for n in frozen)


def test_text_encoder_weights_unchanged_and_absent_from_optimizer(tiny_clip_file):
    cfg = _cfg(tiny_clip_file)
    model = _model(cfg)
    model.train()
    opt = build_optimizer(cfg, model)
    in_opt = {id(p) for g in opt.param_groups for p in g["params"]}
    text_params = {n: p for n, p in model.text_encoder.named_parameters() if "prompt_learner" not in n}
    assert not any(id(p) in in_opt for p in text_params.values())
    assert id(model.text_encoder.prompt_learner.ctx) in in_opt
    before = {n: p.detach().clone() for n, p in text_params.items()}
    ctx_before = model.text_encoder.prompt_learner.ctx.detach().clone()
    sum(model(_batch(cfg)).values()).backward()
    opt.step()
    for n, p in text_params.items():
        assert torch.equal(p, before[n]), n
    assert not torch.equal(model.text_encoder.prompt_learner.ctx, ctx_before)
    # prompts are trained at the base lr, not the backbone multiplier
    ctx = model.text_encoder.prompt_learner.ctx
    ctx_group = next(g for g in opt.param_groups if any(p is ctx for p in g["params"]))
    assert ctx_group["lr"] == cfg.SOLVER.BASE_LR


def test_meta_architecture_and_decoder_must_match(tiny_clip_file):
    """One switch (MODEL.META_ARCHITECTURE); a decoder that does not fit it fails at build, naming the keys."""
    with pytest.raises(ValueError, match="TRANSFORMER_DECODER_NAME 'MaskTextDecoder'.*got 'MaskedDecoder'"):
        build_model(_cfg(tiny_clip_file, "MODEL.MASK_FORMER.TRANSFORMER_DECODER_NAME", "MaskedDecoder"))
    base_cfg = toy_cfg("mask2former_toy.yaml", ["MODEL.MASK_FORMER.TRANSFORMER_DECODER_NAME", "MaskTextDecoder"])
    with pytest.raises(ValueError, match="'MaskTextDecoder' needs text features.*'MTACLIP'"):
        build_model(base_cfg)
    assert type(_model(toy_cfg("mask2former_toy.yaml"))) is SemanticMask2Former


@pytest.mark.parametrize("supervise_initial", [True, False])
def test_shapes_reach_decoder_and_criterion_from_their_producers(tiny_clip_file, supervise_initial):
    """K and C' come from the text encoder, the supervised predictions from the decoder."""
    cfg = _cfg(
        tiny_clip_file,
        "MODEL.CLIP.TEXT.NUM_PROMPTS",
        "2",
        "MODEL.MASK_FORMER.SUPERVISE_INITIAL_PREDICTION",
        str(supervise_initial),
    )
    model = _model(cfg)
    decoder, encoder = model.sem_seg_head.predictor, model.text_encoder
    assert (decoder.num_prompts, decoder.num_text_queries) == (2, 2 * 7)
    assert (encoder.num_prompts, encoder.num_classes) == (2, 7)
    assert decoder.text_proj.in_features == encoder.embed_dim
    layers = cfg.MODEL.MASK_FORMER.DEC_LAYERS - 1
    assert model.criterion.num_aux_outputs == layers + int(supervise_initial) - 1
    model.train()
    outputs = model.sem_seg_head(
        model.backbone(model.preprocess_image(_batch(cfg, 1)).tensor), **model.transformer_decoder_inputs()
    )
    assert len(outputs["aux_outputs"]) == model.criterion.num_aux_outputs
    assert outputs["pred_sim"].shape[-2:] == (2, 7)


def test_eval_caches_text_features(tiny_clip_file, monkeypatch):
    cfg = _cfg(tiny_clip_file)
    model = _model(cfg).eval()
    calls = []
    original = model.text_encoder.encode
    monkeypatch.setattr(model.text_encoder, "encode", lambda: calls.append(1) or original())
    inputs = [{"image": torch.randint(0, 255, (3, 64, 64), dtype=torch.uint8)}]
    with torch.no_grad():
        model(inputs)
        out = model(inputs)
    assert len(calls) == 1
    assert out[0]["sem_seg"].shape == (6, 64, 64)


def test_train_step_with_an_unlabelled_image(tiny_clip_file):
    cfg = _cfg(tiny_clip_file)
    model = _model(cfg)
    model.train()
    batch = _batch(cfg)
    empty = dict(batch[0])
    inst = Instances(empty["image"].shape[-2:])
    inst.gt_classes = torch.zeros((0,), dtype=torch.int64)
    inst.gt_masks = torch.zeros((0, *empty["image"].shape[-2:]), dtype=torch.bool)
    empty["instances"] = inst
    losses = model([empty, batch[1]])
    total = sum(losses.values())
    assert torch.isfinite(total)
    total.backward()
    losses = model([empty, empty])
    assert all(torch.isfinite(v) for v in losses.values())


def test_wrong_number_of_class_names_is_a_clear_error(tiny_clip_file):
    with pytest.raises(ValueError, match="NUM_CLASSES is 7 but training dataset 'toy_sem_seg_train' has 6"):
        _cfg(tiny_clip_file, "MODEL.SEM_SEG_HEAD.NUM_CLASSES", "7")  # the config check comes first
    cfg = _cfg(tiny_clip_file)
    cfg.MODEL.SEM_SEG_HEAD.NUM_CLASSES = 7  # past the config check: the model's own check
    with pytest.raises(ValueError, match="NUM_CLASSES"):
        build_model(cfg)


def test_switch_combination_without_a_text_effect_is_rejected(tiny_clip_file):
    """Without L_sim and with separate attention the prompts would get no gradient: fails at build."""
    opts = ["MODEL.MTA_CLIP.JOINT_SELF_ATTENTION", "False", "MODEL.MTA_CLIP.USE_SIM_LOSS", "False"]
    with pytest.raises(ValueError, match="META_ARCHITECTURE 'SemanticMask2Former'"):
        build_model(_cfg(tiny_clip_file, *opts))


@pytest.mark.parametrize(
    "opts",
    [
        ["MODEL.MTA_CLIP.USE_SIM_LOSS", "False"],
        ["MODEL.MTA_CLIP.NEGATIVES", "SeparateNeg", "MODEL.CLIP.TEXT.NUM_PROMPTS", "2"],
        ["MODEL.MTA_CLIP.JOINT_SELF_ATTENTION", "False", "MODEL.MTA_CLIP.NONE_CLASS", "False"],
        [
            "MODEL.MTA_CLIP.TEXT_REDUCTION",
            "mlp",
            "MODEL.MTA_CLIP.RETURN_PROJECTION",
            "mlp",
            "MODEL.MTA_CLIP.SIMILARITY",
            "dot",
            "MODEL.MTA_CLIP.TEMPERATURE",
            "0.07",
        ],
    ],
)
def test_ablation_switches_train(tiny_clip_file, opts):
    cfg = _cfg(tiny_clip_file, *opts)
    model = _model(cfg)
    model.train()
    losses = model(_batch(cfg))
    assert ("loss_sim" in losses) == cfg.MODEL.MTA_CLIP.USE_SIM_LOSS
    sum(losses.values()).backward()
    unused = [n for n, p in model.named_parameters() if p.requires_grad and p.grad is None]
    assert not unused, unused


def test_clip_file_is_read_once_per_model_build(tiny_clip_file, monkeypatch):
    """A CLIP backbone and the text encoder share one read of MODEL.CLIP.WEIGHTS."""
    import mta_clip.modeling.clip.weights as weights_module

    reads = []
    read = weights_module._read_raw
    monkeypatch.setattr(weights_module, "_read_raw", lambda path: reads.append(path) or read(path))
    cfg = _cfg(tiny_clip_file, "MODEL.BACKBONE.NAME", "CLIPResNet", "MODEL.CLIP.IMAGE_SIZE", "[96, 96]")
    model = _model(cfg)
    assert reads == [tiny_clip_file]
    state, _ = weights_module.read_clip_weights(tiny_clip_file)  # a second, independent read
    assert torch.equal(model.backbone.conv1.weight, state["visual.conv1.weight"])
    assert torch.equal(model.text_encoder.token_embedding.weight, state["token_embedding.weight"])
    _model(cfg)
    assert len(reads) == 3  # nothing is kept between builds
