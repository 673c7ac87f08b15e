"""Torch side: corpus readers, vocabularies, models, trainer, evaluation."""
