"""One router per capability."""
