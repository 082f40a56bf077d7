"""speechssl: self-supervised speech representations."""

__version__ = "0.1.0"


def load(path=None, device: str = "auto", quantize=None, precision: str = "auto"):
    """Load a checkpoint (the shipped default when ``path`` is None); see speechssl.api."""
    from speechssl.api import load as _load

    return _load(path, device=device, quantize=quantize, precision=precision)
