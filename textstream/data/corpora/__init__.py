"""Package data: ``registry.json``, the public corpora textstream downloads by name (see ``data.sources``)."""
