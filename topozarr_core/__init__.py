"""topozarr_core: plan and write multiscale GeoZarr pyramids from xarray datasets.

Pure library: no Prefect imports here. Flows in ``flows/`` wrap it.
"""
