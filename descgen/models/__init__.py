"""Model configs shipped with the package, usable by name: open_clip model configs (``clip-tiny``)
and ViCLIP configs (``viclip-b16``, ``viclip-l14``, ``viclip-tiny``; ``"family": "viclip"``)."""
