from .ms_deform_attn import (  # noqa: F401 (re-exported; the list is the op module's __all__)
    __all__,
    ms_deform_attn_compiled,
    ms_deform_attn_op_available,
    ms_deform_attn_op_import_error,
    ms_deform_attn_pytorch,
    ms_deform_attn_pytorch_gather,
    multi_scale_deformable_attention,
)
