"""Exports of hf_dynamic models to the engines users deploy on (``docs/gguf.md``, ``docs/onnx.md``).

A layer above ``models/``: it reads finished models (stock transformers ones and hf_dynamic's model types) and
writes files another engine runs — GGUF for llama.cpp, ONNX graphs for onnxruntime. Nothing in the library below
it imports it; the public entry points are re-exported lazily by the package root.
"""
