"""Model configs of small backbones (open_clip format), used by tests and the quickstart."""
