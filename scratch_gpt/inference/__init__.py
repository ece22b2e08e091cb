"""Inference: loading a model folder for generation, chat and streaming replies, the web page.

Nothing here imports `scratch_gpt.training`: a trained folder is all inference needs.
"""
