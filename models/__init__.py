"""PyTorch models that learn online. Every model answers the same interface (models.base.Model)."""
