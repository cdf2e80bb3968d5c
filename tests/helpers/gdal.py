"""GDAL's name for one level's variable of a Zarr pyramid (tests/contract/test_gdal.py and its flow half)."""

from __future__ import annotations


def gdal_name(root, level: int, var: str = "air") -> str:
    return f'ZARR:"{root}":/{level}/{var}'
