"""Reading data sets: VOC trees, labels, classes, augmentation, the synthetic set, the download (the data layer:
docs/architecture.md)."""
