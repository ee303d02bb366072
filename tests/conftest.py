"""Shared fixtures. Tests default to CPU, one torch thread, and never touch the network."""

import os

os.environ.setdefault("HF_HUB_DISABLE_XET", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "0")
