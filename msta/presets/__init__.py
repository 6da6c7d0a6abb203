"""YAML presets shipped with the package."""
