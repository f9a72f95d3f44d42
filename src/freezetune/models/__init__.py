"""Models: loading from local sources (the embedded GGUF, HF folders, the local hub cache), nothing downloaded."""
