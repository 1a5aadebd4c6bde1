"""The data-ingestion pipeline: a hospital export, read through its dataset card.

Holds: the card (cardspec), raw tables (tables), column mapping, units, conversion and validation,
built-in synthetic hospitals and their export, and where a study gets its rows (sources).
May import: models.schema, pandas, pyarrow, yaml; the PyTorch core never imports it.
"""
