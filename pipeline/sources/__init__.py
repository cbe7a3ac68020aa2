"""One adapter per dataset layout; each yields :class:`ScanRecord` and loads :class:`ScanGeometry`."""
