"""Runtimes turn files in a model version folder into a `Model`. None of them imports Flask."""
