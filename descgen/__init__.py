"""descgen: LLM-written spatial and temporal class descriptions, cached with full provenance.

Importing this package must stay cheap: no torch, no open_clip at import time.
"""

__version__ = "0.1.0"
