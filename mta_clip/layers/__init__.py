from .ms_deform_attn import multi_scale_deformable_attention, ms_deform_attn_pytorch

__all__ = ["multi_scale_deformable_attention", "ms_deform_attn_pytorch"]
