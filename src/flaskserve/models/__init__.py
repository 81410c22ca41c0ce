"""The embedded default models, built from data that ships inside installed packages."""
