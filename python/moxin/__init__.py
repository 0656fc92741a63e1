"""moxin: the Moxin-7B vision-language model engine (C++/CUDA) from Python.

    import moxin
    model = moxin.Model.load("/models/Moxin-7B-VLM-hf", device="cuda")
    print(model.generate("What is in this picture?", image="cat.jpg", max_tokens=64))
    for piece in model.generate("Describe it.", image="cat.jpg", stream=True):
        print(piece, end="", flush=True)

Every engine failure raises moxin.Error (a RuntimeError) with the engine's message. The engine
runs without the GIL: other Python threads keep running during loads and generations.
"""
from ._core import Error, Generation
from ._images import ImageInput, preprocess
from ._model import Model

__all__ = ["Error", "Generation", "ImageInput", "Model", "preprocess"]
