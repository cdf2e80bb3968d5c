"""What a pyramid's groups and documents hold: convention metadata, level datasets and documents, viewer hints."""
