from tests.backends import backend  # noqa: F401  (fixture)
