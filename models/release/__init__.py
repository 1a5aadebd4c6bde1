"""A trained model as a signed bundle: its files, model card, signature, scoring and ONNX export.

Holds: bundle (layout, SHA-256 manifest, verification), signing (Ed25519 keys), model_card,
scorer (a verified bundle rebuilt for scoring), onnx_export (the network with its preprocessing).
May import: the PyTorch core (schema, encoding, nets), cryptography, onnx; never ingest or flwr.
"""
