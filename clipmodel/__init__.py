"""CLIP for the embedding side of vectorsearch: tokenizer, image preprocessing, model identity,
weights tooling (a random test model, export of real Hugging Face weights into a Triton model
repository) and running ``tritonserver`` as a child process.

``tokenizer`` and ``preprocess`` import nothing from this package (standard library, numpy,
Pillow, ``regex``, ``ftfy``): the export copies them beside each Triton model's ``model.py``, so
a model repository is self-contained. Modules that need torch (``identity``, ``random``,
``export``) import it themselves; importing the package does not.
"""
