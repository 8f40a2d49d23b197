"""MTA-CLIP for Detectron2."""
