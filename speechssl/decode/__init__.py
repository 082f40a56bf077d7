"""From CTC emissions to text: greedy and beam search (optional n-gram LM), word timestamps."""
