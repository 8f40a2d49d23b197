"""Mask-Text Decoder (paper §3.2, Eqs. 1–6): text queries join the mask queries.

Per forward, the CLIP text features ``t`` (K, C', D) are reduced to the decoder width (Eq. 1),
placed before the N mask queries (Eq. 2: ``q = [t_hat; m]``, K·C' + N queries), and go through
the masked-attention layers of :class:`MaskedDecoder` (Eqs. 3–4). After every prediction both
kinds of queries are projected back to CLIP space (Eq. 5) and compared (Eq. 6), giving
``pred_sim`` (B, N, K, C') for the mask-to-text contrastive loss.

Inference reads only the mask queries' last prediction, so it skips the text queries' rows in the
last layer's self-attention and FFN, Eqs. 5-6, and, with separate self-attention (where the mask
queries never see them), the text queries altogether.
"""

from typing import Dict, Optional, Tuple

import torch
import torch.nn.functional as F
from detectron2.config import configurable
from torch import nn
from torch.utils.checkpoint import checkpoint

from ..config import choice
from ..layers.ms_deform_attn import graph_capture_active
from .masked_decoder import MLP, TRANSFORMER_DECODER_REGISTRY, MaskedDecoder


@TRANSFORMER_DECODER_REGISTRY.register()
class MaskTextDecoder(MaskedDecoder):
    """``MaskedDecoder`` with text queries, CLIP-space projections and mask-text similarity.

    Query order is prompt-major text queries (k, c) first, then the N mask queries. With
    ``num_text_queries = 0`` it is exactly the parent decoder.
    """

    @configurable
    def __init__(
        self,
        in_channels: int,
        *,
        num_text_queries: int,
        num_prompts: int,
        text_dim: int,
        text_reduction: str = "linear_ln",
        return_projection: str = "gamma",
        gamma_init: float = 1e-4,
        similarity: str = "cosine",
        temperature: float = 1.0,
        learnable_temperature: bool = False,
        joint_self_attention: bool = True,
        text_attention_mask: str = "predicted",
        text_query_pos: str = "learned",
        with_similarity: bool = True,
        recompute_similarity: bool = True,
        **kwargs,
    ):
        """
        Args:
            num_text_queries: K·C' (0 disables the text branch).
            num_prompts: K; ``pred_sim`` is reshaped to (B, N, K, C').
            text_dim: D, width of the CLIP text features.
            text_reduction: Eq. 1: "linear_ln" (authors: Linear, then one LayerNorm over all
                queries, mask queries included) or "mlp" (paper: 2-layer MLP on the text only).
            return_projection: Eq. 5: "gamma" (authors: t' = t0 + γ·LN(Linear(t̂)), m' = Linear(m))
                or "mlp" (paper: t' = MLP(t̂) + t0, m' = MLP(m)).
            gamma_init: initial value of the per-channel γ.
            similarity: Eq. 6: "cosine" (authors) or "dot" (paper), divided by τ.
            temperature: τ (initial value when learnable).
            learnable_temperature: learn log τ.
            joint_self_attention: False = text and mask queries do not attend to each other.
            text_attention_mask: "predicted" (authors: text queries predict masks through the
                shared mask head, which give their attention masks) or "none" (no mask).
            text_query_pos: "learned" (one embedding per text query) or "zero".
            with_similarity: build the Eq. 5 projections and output ``pred_sim`` (off for the
                "text-enhanced only" ablation, which has no L_sim).
            recompute_similarity: in training, recompute Eqs. 5-6 during backward instead of
                keeping their (B, K*C', D) intermediates: same values and gradients, less memory
                for a little more time (figures in docs/benchmarks.md).
        """
        super().__init__(in_channels, **kwargs)
        hidden = self.query_feat.weight.shape[1]
        self.num_text_queries = num_text_queries
        self.num_prompts = num_prompts
        self.joint_self_attention = joint_self_attention
        self.text_reduction = choice(("linear_ln", "mlp"), text_reduction, "MODEL.MTA_CLIP.TEXT_REDUCTION")
        self.return_projection = choice(("gamma", "mlp"), return_projection, "MODEL.MTA_CLIP.RETURN_PROJECTION")
        self.similarity = choice(("cosine", "dot"), similarity, "MODEL.MTA_CLIP.SIMILARITY")
        self.text_attention_mask = choice(
            ("predicted", "none"), text_attention_mask, "MODEL.MTA_CLIP.TEXT_ATTENTION_MASK"
        )
        text_query_pos = choice(("learned", "zero"), text_query_pos, "MODEL.MTA_CLIP.TEXT_QUERY_POS")
        self.with_similarity = with_similarity and num_text_queries > 0
        self.recompute_similarity = recompute_similarity
        if num_text_queries == 0:
            return
        if num_text_queries % num_prompts != 0:
            raise ValueError(f"num_text_queries ({num_text_queries}) must be a multiple of K ({num_prompts})")
        if self.text_reduction == "linear_ln":
            self.text_proj = nn.Linear(text_dim, hidden)
            self.query_norm = nn.LayerNorm(hidden)
        else:
            self.text_proj = MLP(text_dim, hidden, hidden, 2)
        self.text_query_embed = nn.Embedding(num_text_queries, hidden) if text_query_pos == "learned" else None
        if not with_similarity:
            return
        if self.return_projection == "gamma":
            self.text_to_clip = nn.Linear(hidden, text_dim)
            self.text_to_clip_norm = nn.LayerNorm(text_dim)
            self.text_gamma = nn.Parameter(torch.full((text_dim,), float(gamma_init)))
            self.mask_to_clip = nn.Linear(hidden, text_dim)
        else:
            self.text_to_clip = MLP(hidden, hidden, text_dim, 2)
            self.mask_to_clip = MLP(hidden, hidden, text_dim, 2)
        log_tau = torch.tensor(float(temperature)).log()
        if learnable_temperature:
            self.log_temperature = nn.Parameter(log_tau)
        else:
            self.register_buffer("log_temperature", log_tau, persistent=False)

    @classmethod
    def from_config(cls, cfg, in_channels: int, text_shape: Optional[Tuple[int, int, int]] = None):
        """``text_shape`` (K, C', D) is the shape of the text features, given by the meta-architecture
        that owns the text encoder (``MTACLIP``)."""
        if text_shape is None:
            raise ValueError(
                f"MODEL.MASK_FORMER.TRANSFORMER_DECODER_NAME {cfg.MODEL.MASK_FORMER.TRANSFORMER_DECODER_NAME!r} "
                "needs text features: use it with MODEL.META_ARCHITECTURE 'MTACLIP' (the baseline "
                f"{cfg.MODEL.META_ARCHITECTURE!r} uses 'MaskedDecoder')"
            )
        ret = super().from_config(cfg, in_channels)
        mc = cfg.MODEL.MTA_CLIP
        num_prompts, num_text_classes, text_dim = text_shape
        ret.update(
            num_text_queries=num_prompts * num_text_classes,
            num_prompts=num_prompts,
            text_dim=text_dim,
            text_reduction=mc.TEXT_REDUCTION,
            return_projection=mc.RETURN_PROJECTION,
            gamma_init=mc.GAMMA_INIT,
            similarity=mc.SIMILARITY,
            temperature=mc.TEMPERATURE,
            learnable_temperature=mc.LEARNABLE_TEMPERATURE,
            joint_self_attention=mc.JOINT_SELF_ATTENTION,
            text_attention_mask=mc.TEXT_ATTENTION_MASK,
            text_query_pos=mc.TEXT_QUERY_POS,
            with_similarity=mc.USE_SIM_LOSS,
            recompute_similarity=mc.RECOMPUTE_SIMILARITY,
        )
        return ret

    def forward(self, x, mask_features: torch.Tensor, text_embeddings: Optional[torch.Tensor] = None, **inputs):
        """As :meth:`MaskedDecoder.forward`; ``text_embeddings`` (K, C', D) from the text encoder."""
        use_text = self._text_queries_needed()
        if use_text and self.text_attention_mask == "predicted" and not graph_capture_active():
            # the text queries' masks are built at the memory resolutions: resize mask_features once
            with torch.no_grad():
                inputs["resized_mask_features"] = {
                    _size_key(m.shape[-2:]): F.interpolate(
                        mask_features, size=m.shape[-2:], mode="bilinear", align_corners=False
                    )
                    for m in x
                }
        return super().forward(x, mask_features, text_embeddings=text_embeddings, use_text=use_text, **inputs)

    def _text_queries_needed(self) -> bool:
        """Whether the text queries run: not in eval with separate self-attention, where the mask
        queries never read them (the output is the same without them)."""
        return self.num_text_queries > 0 and (self.training or self.joint_self_attention)

    # ----------------------------------------------------------------- hooks
    def _initial_queries(
        self, batch: int, text_embeddings: Optional[torch.Tensor] = None, use_text: bool = True, **inputs
    ):
        feat, pos = super()._initial_queries(batch)
        if self.num_text_queries == 0:
            return feat, pos
        if use_text:
            t = self._check_text(text_embeddings).flatten(0, 1)  # (T, D), prompt-major
            t_hat = self.text_proj(t.to(feat.dtype)).unsqueeze(1).expand(-1, batch, -1)  # Eq. 1
            feat = torch.cat([t_hat, feat], 0)  # Eq. 2
            text_pos = (
                self.text_query_embed.weight.unsqueeze(1).expand(-1, batch, -1)
                if self.text_query_embed is not None
                else pos.new_zeros((self.num_text_queries, batch, pos.shape[-1]))
            )
            pos = torch.cat([text_pos, pos], 0)
        if self.text_reduction == "linear_ln":
            feat = self.query_norm(feat)  # per query: the mask queries get it with or without text
        return feat, pos

    def _self_attention_mask(self, num_queries: int, device) -> Optional[torch.Tensor]:
        if num_queries == self.num_queries or self.joint_self_attention:
            return None
        is_text = torch.arange(num_queries, device=device) < num_queries - self.num_queries
        return is_text[:, None] != is_text[None, :]  # block text <-> mask attention

    def _first_row_read_after_last_layer(self, num_queries: int) -> int:
        """The text queries' last-layer outputs are read only by ``pred_sim`` in training."""
        t_count = num_queries - self.num_queries
        return 0 if t_count == 0 or (self.training and self.with_similarity) else t_count

    def _predict(
        self,
        output: torch.Tensor,
        mask_features: torch.Tensor,
        attn_size,
        supervised: bool = True,
        text_embeddings: Optional[torch.Tensor] = None,
        resized_mask_features=None,
        **inputs,
    ) -> Dict:
        """Baseline heads on the mask queries; ``pred_sim`` only where a training loss reads it."""
        t_count = output.shape[0] - self.num_queries
        if t_count == 0:
            return super()._predict(output, mask_features, attn_size, supervised)
        decoded = self.decoder_norm(output).transpose(0, 1)  # (B, Q, hidden)
        text_q, mask_q = decoded[:, :t_count], decoded[:, t_count:]
        masks = torch.einsum("bqc,bchw->bqhw", self.mask_embed(mask_q), mask_features)
        out = {"pred_logits": self.class_embed(mask_q), "pred_masks": masks, "attn_mask": None}
        if self.with_similarity and self.training and supervised:
            t0 = self._check_text(text_embeddings)
            if self.recompute_similarity and torch.is_grad_enabled():
                out["pred_sim"] = checkpoint(self._similarity, mask_q, text_q, t0, use_reentrant=False)
            else:
                out["pred_sim"] = self._similarity(mask_q, text_q, t0)
        if attn_size is None:
            return out
        mask_attn = self._attention_mask(masks, attn_size)
        b = decoded.shape[0]
        if self.text_attention_mask == "predicted":
            # Text masks only build attention masks (never supervised): computed without autograd,
            # directly at the attention resolution (resizing commutes with the per-pixel dot product).
            with torch.no_grad():
                if resized_mask_features is not None:
                    small = resized_mask_features[_size_key(attn_size)]
                else:  # while a graph is recorded for export: symbolic sizes cannot be dict keys
                    small = F.interpolate(mask_features, size=attn_size, mode="bilinear", align_corners=False)
                text_masks = torch.einsum("bqc,bchw->bqhw", self.mask_embed(text_q), small)
                text_attn = text_masks.sigmoid().flatten(2) < 0.5
        else:
            hw = attn_size[0] * attn_size[1]
            text_attn = mask_attn.new_zeros((b, t_count, hw))
        out["attn_mask"] = torch.cat([text_attn, mask_attn], 1)
        return out

    # ----------------------------------------------------------------- Eqs. 5-6
    def _similarity(self, mask_q: torch.Tensor, text_q: torch.Tensor, t0: torch.Tensor) -> torch.Tensor:
        """mask_q (B, N, hidden), text_q (B, T, hidden), t0 (K, C', D) -> S (B, N, K, C')."""
        t0 = t0.flatten(0, 1).to(mask_q.dtype)  # (T, D)
        m_clip = self.mask_to_clip(mask_q)
        if self.return_projection == "gamma":
            t_clip = t0 + self.text_gamma * self.text_to_clip_norm(self.text_to_clip(text_q))
        else:
            t_clip = self.text_to_clip(text_q) + t0
        if self.similarity == "cosine":
            m_clip = F.normalize(m_clip, dim=-1)
            t_clip = F.normalize(t_clip, dim=-1)
        sim = torch.einsum("bnd,btd->bnt", m_clip, t_clip) / self.log_temperature.exp()
        b, n, t = sim.shape
        return sim.view(b, n, self.num_prompts, t // self.num_prompts)

    def _check_text(self, text_embeddings: Optional[torch.Tensor]) -> torch.Tensor:
        if text_embeddings is None:
            raise ValueError("MaskTextDecoder needs text_embeddings (K, C', D) from the text encoder")
        if text_embeddings.dim() != 3 or text_embeddings.shape[0] * text_embeddings.shape[1] != self.num_text_queries:
            raise ValueError(
                f"text_embeddings must be (K={self.num_prompts}, C', D) with K*C' = {self.num_text_queries}; "
                f"got {tuple(text_embeddings.shape)}"
            )
        return text_embeddings


def _size_key(size) -> tuple:
    """(h, w) as plain ints (sizes are tensors while tracing, e.g. for FLOP counting)."""
    return tuple(int(v) for v in size)
