"""seq2seq: deep stacked RNN encoder-decoder toolkit for neural machine translation."""

__version__ = "0.1.0"
