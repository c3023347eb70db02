"""modelyard: the lifecycle of ML models and LLMs as Prefect flows, with an auditable record."""

__version__ = "0.1.0"
