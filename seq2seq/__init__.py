"""seq2seq: deep stacked RNN encoder-decoder toolkit for neural machine translation.

    from seq2seq import Translator
    translator = Translator.load("exp/multi30k_de_en_cpu")
    translator.translate(["Ein Mann fährt Fahrrad."], beam=5)
"""

__version__ = "0.1.0"

__all__ = ["Translator", "__version__"]


def __getattr__(name: str):
    # Imported on first use, so that `import seq2seq` (and the CLI's --help) stays light.
    if name == "Translator":
        from seq2seq.translate import Translator
        return Translator
    raise AttributeError(f"module 'seq2seq' has no attribute {name!r}")
