"""Training: one loop (loop.py) and the tasks it runs (pretrain, ctc, speaker)."""
