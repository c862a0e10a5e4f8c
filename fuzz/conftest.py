"""The hypothesis profiles for fuzz/ (and tests/) live in the rootdir conftest.py, loaded before any test module."""
