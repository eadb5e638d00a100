"""Diffusion-DPO training of safety experts: the loss, batches from the synthesis cache, one step.

Pure torch + diffusers + peft; the Ray Train + DeepSpeed loop that drives it lives in ``cluster/``.
"""
