"""Inference: a person model + speech -> a talking video (DESIGN.md step 8)."""
