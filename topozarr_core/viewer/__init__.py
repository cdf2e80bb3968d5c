"""Pictures: quicklook PNGs and the colormaps they share with the preview."""
