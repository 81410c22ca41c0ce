"""Server core: models, signatures, the repository and the protocol-neutral data plane."""
