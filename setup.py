"""Packaging: metadata lives in pyproject.toml; this adds the Twisted plugin module."""

from setuptools import find_packages, setup

setup(
    packages=[*find_packages(exclude=["tests*", "bench*"]), "twisted.plugins"],
    package_data={
        "twisted.plugins": ["wcs_plugin.py"],
        "wcs.web": ["demo/*"],
        "wcs.rest": ["openapi.json"],
    },
)
