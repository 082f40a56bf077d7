"""wav2vec 2.0 parts (one file each) and their assembly in wav2vec2.py."""
