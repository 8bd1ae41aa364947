"""flowers tests: real Redis, real workers, real photos and weights (see conftest.py)."""
