"""Diffusion-DPO training of safety experts: the loss, batches from the synthesis cache, the step,
and the loop (``trainer.ExpertTrainer``, on any engine with DeepSpeed's step interface).

Pure torch + diffusers + peft; ``cluster/expert_loop.py`` runs the trainer on Ray Train workers
with a DeepSpeed engine.
"""
