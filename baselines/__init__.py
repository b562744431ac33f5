"""Baseline models written from scratch (one module per family); importing registers them."""
