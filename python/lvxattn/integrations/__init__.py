"""Models from other libraries run through lvxattn.

* ``lvxattn.integrations.mllama``: Hugging Face ``transformers``' Llama 3.2 Vision
  (Mllama) with its cross-attention layers over sharded visual tokens
  (needs the ``hf`` extra: ``pip install lvxattn[hf]``).

Submodules are imported on demand, so ``import lvxattn`` never needs their libraries.
"""
