from .ms_deform_attn import (
    ms_deform_attn_compiled,
    ms_deform_attn_op_available,
    ms_deform_attn_op_import_error,
    ms_deform_attn_pytorch,
    multi_scale_deformable_attention,
)

__all__ = [
    "multi_scale_deformable_attention",
    "ms_deform_attn_pytorch",
    "ms_deform_attn_compiled",
    "ms_deform_attn_op_available",
    "ms_deform_attn_op_import_error",
]
