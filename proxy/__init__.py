"""optout-proxy: keeps AI-training crawlers away from content whose owners opted out."""

__version__ = "0.1.0"
