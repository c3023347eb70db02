"""Integration tests: the real Prefect, MLflow, nginx, Docker, PostgreSQL and Chromium, started
once per session by the fixtures in tests/conftest.py."""
